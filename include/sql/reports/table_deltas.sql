-- Per table: counters between two snapshots (same reset rules as statement_deltas.sql, with
-- pg_stat_database.stats_reset), gauges (live/dead tuples, sizes, ages) as of the end snapshot.
-- Parameterized (%(end_id)s, %(base_id)s which may be NULL).
WITH e_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(end_id)s),
b_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(base_id)s),
reset AS (
    SELECT NOT EXISTS (SELECT 1 FROM b_snap)
           OR (SELECT b.db_stats_reset IS DISTINCT FROM e.db_stats_reset
                      OR b.postmaster_start IS DISTINCT FROM e.postmaster_start
                 FROM b_snap b, e_snap e) AS between
),
pairs AS (
    SELECT e.*, b.relid IS NULL OR (SELECT between FROM reset)
                OR e.seq_scan < b.seq_scan OR e.idx_scan < b.idx_scan OR e.n_tup_ins < b.n_tup_ins
                OR e.n_tup_upd < b.n_tup_upd OR e.n_tup_del < b.n_tup_del
                OR e.heap_blks_hit < b.heap_blks_hit OR e.heap_blks_read < b.heap_blks_read AS fresh,
           b.seq_scan AS b_seq_scan, b.seq_tup_read AS b_seq_tup_read, b.idx_scan AS b_idx_scan,
           b.n_tup_ins AS b_ins, b.n_tup_upd AS b_upd, b.n_tup_del AS b_del, b.n_tup_hot_upd AS b_hot,
           b.heap_blks_read AS b_heap_read, b.heap_blks_hit AS b_heap_hit,
           b.idx_blks_read AS b_idx_read, b.idx_blks_hit AS b_idx_hit,
           b.total_bytes AS b_total_bytes, b.n_dead_tup AS b_dead
    FROM csl_ops.perf_snapshot_tables e
    LEFT JOIN csl_ops.perf_snapshot_tables b ON b.snapshot_id = %(base_id)s AND b.relid = e.relid
    WHERE e.snapshot_id = %(end_id)s
)
SELECT relid, schema_name, table_name,
       CASE WHEN fresh THEN seq_scan ELSE seq_scan - b_seq_scan END             AS seq_scans,
       CASE WHEN fresh THEN seq_tup_read ELSE seq_tup_read - b_seq_tup_read END AS seq_rows_read,
       CASE WHEN fresh THEN idx_scan ELSE idx_scan - b_idx_scan END             AS idx_scans,
       CASE WHEN fresh THEN n_tup_ins ELSE n_tup_ins - b_ins END                AS inserted,
       CASE WHEN fresh THEN n_tup_upd ELSE n_tup_upd - b_upd END                AS updated,
       CASE WHEN fresh THEN n_tup_del ELSE n_tup_del - b_del END                AS deleted,
       CASE WHEN fresh THEN n_tup_hot_upd ELSE n_tup_hot_upd - b_hot END        AS hot_updated,
       CASE WHEN fresh THEN heap_blks_read ELSE heap_blks_read - b_heap_read END AS heap_blks_read,
       CASE WHEN fresh THEN heap_blks_hit ELSE heap_blks_hit - b_heap_hit END    AS heap_blks_hit,
       CASE WHEN fresh THEN idx_blks_read ELSE idx_blks_read - b_idx_read END    AS idx_blks_read,
       CASE WHEN fresh THEN idx_blks_hit ELSE idx_blks_hit - b_idx_hit END       AS idx_blks_hit,
       n_live_tup, n_dead_tup, n_mod_since_analyze, reltuples, xid_age,
       table_bytes, index_bytes, total_bytes,
       total_bytes - coalesce(b_total_bytes, total_bytes)                        AS growth_bytes,
       last_vacuum, last_autovacuum, last_analyze, last_autoanalyze,
       fresh AND b_seq_scan IS NOT NULL                                          AS counted_from_reset
FROM pairs
