-- Per user index: scans, tuples, I/O, size (see capture_tables.sql on exact_sizes). Parameterized.
INSERT INTO csl_ops.perf_snapshot_indexes
    (snapshot_id, indexrelid, relid, schema_name, table_name, index_name, idx_scan, idx_tup_read,
     idx_tup_fetch, idx_blks_read, idx_blks_hit, size_bytes)
SELECT %(snapshot_id)s, s.indexrelid, s.relid, s.schemaname, s.relname, s.indexrelname,
       s.idx_scan, s.idx_tup_read, s.idx_tup_fetch,
       coalesce(io.idx_blks_read, 0), coalesce(io.idx_blks_hit, 0),
       CASE WHEN %(exact_sizes)s THEN pg_relation_size(s.indexrelid)
            ELSE c.relpages::bigint * current_setting('block_size')::bigint END
FROM pg_stat_user_indexes s
JOIN pg_class c ON c.oid = s.indexrelid
LEFT JOIN pg_statio_user_indexes io ON io.indexrelid = s.indexrelid
