-- Every storage object the platform's tables refer to, as (key, size, source): the one
-- definition of "referenced" for the integrity sweep and the cleanup (csl.references).
-- The raw placeholder is the union of the reference columns (raw, size, source). A value is a key
-- ("samples/0a/x.wav"), or a URL / absolute path the platform stored instead, normalised here:
--   http(s)://<bucket>.<host>/<key>, s3://<bucket>/<key>            virtual-hosted S3
--   http(s)://<host>/<bucket>/<key>                                 path-style S3 (MinIO, SeaweedFS)
--   http(s)://<host>/storage/v1/object/(public|sign|authenticated)/<bucket>/<key>   Supabase Storage
--   http(s)://<cdn>/audio/<key>, /audio/<key>                       the edge
--   http(s)://<cdn>/<key>, /<bucket>/<key>, /<key>
-- A URL's query string and fragment are dropped; %(buckets)s are the configured buckets.
-- A value that is neither a URL nor an absolute path is the key itself, as stored.
SELECT key, size, source
FROM (
    SELECT CASE
               WHEN u.host IS NOT NULL AND split_part(u.host, '.', 1) = ANY(%(buckets)s) THEN u.path
               WHEN NOT u.located THEN u.path
               WHEN split_part(u.rest, '/', 1) = ANY(%(buckets)s)
                   THEN substr(u.rest, length(split_part(u.rest, '/', 1)) + 2)
               WHEN starts_with(u.rest, 'audio/') THEN substr(u.rest, 7)
               ELSE u.rest
           END AS key,
           u.size, u.source
    FROM (
        SELECT r.size, r.source, l.host, l.path, l.located,
               regexp_replace(l.path, '^storage/v1/object/(public|sign|authenticated)/', '') AS rest
        FROM ({raw}) AS r (raw, size, source)
        CROSS JOIN LATERAL (
            SELECT lower(substring(r.raw FROM '^(?:[hH][tT][tT][pP][sS]?|[sS]3)://([^/?#:]+)')) AS host,
                   CASE WHEN r.raw ~* '^(https?|s3)://'
                            THEN coalesce(substring(r.raw FROM '^[A-Za-z0-9]+://[^/?#]*/([^?#]*)'), '')
                        WHEN starts_with(r.raw, '/')
                            THEN ltrim(regexp_replace(r.raw, '[?#].*$', ''), '/')
                        ELSE r.raw
                   END AS path,
                   r.raw ~* '^(https?|s3)://' OR starts_with(r.raw, '/') AS located
        ) AS l
        OFFSET 0  -- a fence: each row's regexes once (flattened, every use of path repeats them)
    ) AS u
    OFFSET 0  -- and its key once, however often the caller uses it
) AS k
WHERE key <> ''
