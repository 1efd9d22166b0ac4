-- Every object reference of the given cells, grouped by cell and sorted within a cell in the
-- providers' listing order: {order} is "parts" (path order: segment by segment, what
-- filer-backed stores such as SeaweedFS and MinIO list) or "key" (S3's byte order).
-- audio_samples know the object's size; generations do not.
WITH refs AS (
    SELECT file_url AS key, file_size::bigint AS size, 'audio_samples' AS source FROM audio_samples
    UNION ALL
    SELECT result_url, NULL::bigint, 'generations' FROM generations WHERE result_url IS NOT NULL AND result_url <> ''
), celled AS (
    SELECT key, size, source, parts,
           CASE WHEN cardinality(parts) > %(depth)s
                THEN array_to_string(parts[1:%(depth)s], '/') || '/'
                ELSE array_to_string(parts[1:cardinality(parts) - 1], '/')
                     || CASE WHEN cardinality(parts) > 1 THEN '/' ELSE '' END || '*'
           END AS cell
    FROM (SELECT key, size, source, string_to_array(key, '/') AS parts FROM refs) r
)
SELECT cell, key, size, source
FROM celled
WHERE cell = ANY(%(cells)s) AND starts_with(key, %(prefix)s)
ORDER BY cell COLLATE "C", {order} COLLATE "C", source
