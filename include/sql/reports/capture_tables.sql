-- Per user table: activity counters, I/O counters, sizes, tuple estimate, frozen-xid age.
-- Sizes: pg_table_size/pg_indexes_size wait for a table someone holds exclusively locked, so
-- the caller sets a short lock_timeout and, when it fires, captures again with exact_sizes false
-- (relpages × block size, as of the last VACUUM/ANALYZE). Parameterized: %% escaped.
INSERT INTO csl_ops.perf_snapshot_tables
    (snapshot_id, relid, schema_name, table_name, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch,
     n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup, n_mod_since_analyze,
     heap_blks_read, heap_blks_hit, idx_blks_read, idx_blks_hit, table_bytes, index_bytes, total_bytes,
     reltuples, xid_age, last_vacuum, last_autovacuum, last_analyze, last_autoanalyze)
SELECT %(snapshot_id)s, s.relid, s.schemaname, s.relname,
       coalesce(s.seq_scan, 0), coalesce(s.seq_tup_read, 0), coalesce(s.idx_scan, 0), coalesce(s.idx_tup_fetch, 0),
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_tup_hot_upd, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       coalesce(io.heap_blks_read, 0), coalesce(io.heap_blks_hit, 0),
       coalesce(io.idx_blks_read, 0), coalesce(io.idx_blks_hit, 0),
       sz.table_bytes, sz.index_bytes, sz.table_bytes + sz.index_bytes,
       greatest(c.reltuples, 0), age(c.relfrozenxid),
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
LEFT JOIN pg_statio_user_tables io ON io.relid = s.relid
CROSS JOIN LATERAL (
    SELECT CASE WHEN %(exact_sizes)s THEN pg_table_size(s.relid)
                ELSE (c.relpages + coalesce((SELECT relpages FROM pg_class t WHERE t.oid = c.reltoastrelid), 0))::bigint
                     * current_setting('block_size')::bigint END AS table_bytes,
           CASE WHEN %(exact_sizes)s THEN pg_indexes_size(s.relid)
                ELSE coalesce((SELECT sum(ic.relpages) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                               WHERE i.indrelid = c.oid), 0)::bigint * current_setting('block_size')::bigint
           END AS index_bytes
) sz
WHERE c.relkind IN ('r', 'm', 'p')
