-- Unused-index evidence: per index of the end snapshot and per source — 'primary' and
-- 'replica <name>' for each replica read at the end snapshot — its scan counter at the end, the
-- last snapshot at which the counter still had another value (a scan came after it: used), and
-- since when it has not moved (still_since; first_seen: the oldest snapshot looked at).
-- Only snapshots whose counters the end's can be compared with count: the same server lifetime
-- (postmaster start) and statistics reset, on a replica also the same server, read 'ok'. Back to
-- the newest snapshot at or before the observation period's start (%(period_s)s seconds before
-- the end), no further: "no scan over the period" is all that is asked. Parameterized
-- (%(end_id)s, %(period_s)s).
WITH e AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(end_id)s),
horizon AS (
    SELECT coalesce(max(s.taken_at), '-infinity') AS since
    FROM csl_ops.perf_snapshots s, e
    WHERE s.database_name = e.database_name AND s.taken_at <= e.taken_at - make_interval(secs => %(period_s)s)
),
looked AS (
    SELECT s.* FROM csl_ops.perf_snapshots s, e, horizon h
    WHERE s.database_name = e.database_name AND s.taken_at <= e.taken_at AND s.taken_at >= h.since
),
obs AS (
    SELECT 'primary' AS source, i.indexrelid, s.id AS snapshot_id, s.taken_at, i.idx_scan
    FROM looked s
    JOIN e ON s.postmaster_start = e.postmaster_start AND s.db_stats_reset IS NOT DISTINCT FROM e.db_stats_reset
    JOIN csl_ops.perf_snapshot_indexes i ON i.snapshot_id = s.id
    UNION ALL
    SELECT 'replica ' || r.replica, ri.indexrelid, s.id, s.taken_at, ri.idx_scan
    FROM csl_ops.perf_snapshot_replicas er
    JOIN csl_ops.perf_snapshot_replicas r
      ON r.replica = er.replica AND r.status = 'ok' AND r.server = er.server
     AND r.postmaster_start = er.postmaster_start AND r.stats_reset IS NOT DISTINCT FROM er.stats_reset
    JOIN looked s ON s.id = r.snapshot_id
    JOIN csl_ops.perf_snapshot_replica_indexes ri ON ri.snapshot_id = r.snapshot_id AND ri.replica = r.replica
    WHERE er.snapshot_id = %(end_id)s AND er.status = 'ok'
),
final AS (SELECT source, indexrelid, idx_scan AS scans_total FROM obs WHERE snapshot_id = %(end_id)s),
moved AS (
    SELECT o.source, o.indexrelid, max(o.taken_at) AS last_moved_at
    FROM obs o JOIN final f USING (source, indexrelid)
    WHERE o.idx_scan <> f.scans_total
    GROUP BY o.source, o.indexrelid
)
SELECT f.source, f.indexrelid, f.scans_total, m.last_moved_at,
       min(o.taken_at) FILTER (WHERE m.last_moved_at IS NULL OR o.taken_at > m.last_moved_at) AS still_since,
       min(o.taken_at) AS first_seen
FROM final f
JOIN obs o USING (source, indexrelid)
LEFT JOIN moved m USING (source, indexrelid)
GROUP BY f.source, f.indexrelid, f.scans_total, m.last_moved_at
