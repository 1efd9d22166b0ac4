-- Per index: scans between two snapshots (reset rules as in table_deltas.sql) and its catalog
-- facts: unique / primary key / backs a constraint / valid, columns, definition.
-- Parameterized (%(end_id)s, %(base_id)s which may be NULL).
WITH e_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(end_id)s),
b_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(base_id)s),
reset AS (
    SELECT NOT EXISTS (SELECT 1 FROM b_snap)
           OR (SELECT b.db_stats_reset IS DISTINCT FROM e.db_stats_reset
                      OR b.postmaster_start IS DISTINCT FROM e.postmaster_start
                 FROM b_snap b, e_snap e) AS between
)
SELECT e.indexrelid, e.schema_name, e.table_name, e.index_name,
       CASE WHEN b.indexrelid IS NULL OR (SELECT between FROM reset) OR e.idx_scan < b.idx_scan
            THEN e.idx_scan ELSE e.idx_scan - b.idx_scan END                       AS scans,
       e.idx_scan                                                                 AS scans_since_reset,
       e.size_bytes,
       b.indexrelid IS NULL AS new_in_window
FROM csl_ops.perf_snapshot_indexes e
LEFT JOIN csl_ops.perf_snapshot_indexes b ON b.snapshot_id = %(base_id)s AND b.indexrelid = e.indexrelid
WHERE e.snapshot_id = %(end_id)s
