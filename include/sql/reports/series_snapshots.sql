-- Header figures of chosen snapshots (database hit/read counters, connections, replica lag).
SELECT id, taken_at, pgss_stats_reset, db_stats_reset, postmaster_start, figures
FROM csl_ops.perf_snapshots
WHERE id = ANY(%(snapshot_ids)s)
ORDER BY taken_at, id
