-- VACUUM/ANALYZE actions of csl_db_maintenance in the window, with before/after dead tuples.
-- Parameterized (%(start)s, %(end)s).
SELECT finished_at, run_id, schema_name, table_name, action, reason, status, duration_ms,
       (before ->> 'n_dead_tup')::bigint AS dead_before,
       (after ->> 'n_dead_tup')::bigint  AS dead_after,
       error
FROM csl_ops.maintenance_actions
WHERE finished_at >= %(start)s AND finished_at <= %(end)s
ORDER BY finished_at DESC
LIMIT 200
