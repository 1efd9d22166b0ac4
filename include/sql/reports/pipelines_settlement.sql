-- Settlement runs in the window with their headline figures. Parameterized (%(start)s, %(end)s).
SELECT run_key, status, started_at, finished_at,
       round(extract(epoch FROM finished_at - started_at)::numeric, 2) AS duration_s,
       figures ->> 'licences' AS licences,
       figures ->> 'held'     AS held,
       gate ->> 'success'     AS gate_passed
FROM csl_ops.settlement_runs
WHERE started_at >= %(start)s AND started_at <= %(end)s
ORDER BY started_at DESC
LIMIT 100
