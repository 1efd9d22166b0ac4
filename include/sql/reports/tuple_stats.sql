-- Exact-ish bloat for one table on request: pgstattuple_approx (reads the pages the visibility
-- map does not vouch for). Parameterized (%(relid)s).
SELECT table_len, approx_tuple_count, approx_tuple_len, approx_tuple_percent, dead_tuple_count,
       dead_tuple_len, dead_tuple_percent, approx_free_space, approx_free_percent
FROM pgstattuple_approx(%(relid)s::regclass)
