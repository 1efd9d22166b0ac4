-- Storage integrity sweeps in the window. Parameterized (%(start)s, %(end)s).
SELECT run_key, status, cells, started_at, finished_at,
       round(extract(epoch FROM finished_at - started_at)::numeric, 2) AS duration_s
FROM csl_ops.storage_sweeps
WHERE started_at >= %(start)s AND started_at <= %(end)s
ORDER BY started_at DESC
LIMIT 50
