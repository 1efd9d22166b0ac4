-- Where an index can be scanned, as a snapshot saw it: the standbys the primary streamed to
-- (pg_stat_replication) and each replica the snapshot was given, read or not (one row with a NULL
-- replica when it was given none). Parameterized (%(snapshot_id)s).
SELECT r.replica, r.status, r.error, r.server,
       jsonb_array_length(coalesce(s.figures -> 'replicas', '[]')) AS standbys
FROM csl_ops.perf_snapshots s
LEFT JOIN csl_ops.perf_snapshot_replicas r ON r.snapshot_id = s.id
WHERE s.id = %(snapshot_id)s
ORDER BY r.replica
