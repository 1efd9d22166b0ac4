-- Cumulative counters of chosen queries at chosen snapshots (the trend charts diff them).
-- Parameterized (%(snapshot_ids)s, %(queryids)s).
SELECT snapshot_id, queryid, sum(calls)::bigint AS calls, sum(total_exec_time)::float8 AS total_ms
FROM csl_ops.perf_snapshot_statements
WHERE snapshot_id = ANY(%(snapshot_ids)s) AND queryid = ANY(%(queryids)s)
GROUP BY snapshot_id, queryid
