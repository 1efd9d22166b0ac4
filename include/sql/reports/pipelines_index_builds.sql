-- Index builds of csl_index_install in the window. Parameterized (%(start)s, %(end)s).
SELECT finished_at, run_id, index_name, table_name, action, status, attempts, duration_ms, size_bytes, error
FROM csl_ops.index_builds
WHERE finished_at >= %(start)s AND finished_at <= %(end)s
ORDER BY finished_at DESC
LIMIT 200
