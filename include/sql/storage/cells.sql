-- The key-prefix cells of every object key the platform's tables refer to (see csl.integrity):
-- a key deeper than %(depth)s segments belongs to the subtree cell of its first %(depth)s
-- segments ("samples/0a/"), a shallower one to the loose cell of its folder ("samples/*").
-- The refs placeholder is csl.references' query.
SELECT DISTINCT
    CASE WHEN cardinality(parts) > %(depth)s
         THEN array_to_string(parts[1:%(depth)s], '/') || '/'
         ELSE array_to_string(parts[1:cardinality(parts) - 1], '/')
              || CASE WHEN cardinality(parts) > 1 THEN '/' ELSE '' END || '*'
    END AS cell
FROM (SELECT string_to_array(key, '/') AS parts FROM ({refs}) AS refs OFFSET 0) AS r  -- parts once per row
