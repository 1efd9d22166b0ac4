-- One replica's answer into a snapshot: whether it was read (and why not), its server lifetime
-- and statistics reset, and every index's scan counter there. Parameterized.
WITH head AS (
    INSERT INTO csl_ops.perf_snapshot_replicas
        (snapshot_id, replica, status, error, server, in_recovery, postmaster_start, stats_reset)
    VALUES (%(snapshot_id)s, %(replica)s, %(status)s, %(error)s, %(server)s, %(in_recovery)s,
            %(postmaster_start)s, %(stats_reset)s)
    RETURNING snapshot_id, replica
)
INSERT INTO csl_ops.perf_snapshot_replica_indexes (snapshot_id, replica, indexrelid, idx_scan)
SELECT h.snapshot_id, h.replica, u.indexrelid::oid, u.idx_scan
FROM head h, unnest(%(indexrelids)s::bigint[], %(scans)s::bigint[]) AS u (indexrelid, idx_scan)
