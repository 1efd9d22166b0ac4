-- Size and dead tuples of chosen tables at chosen snapshots. Parameterized.
SELECT snapshot_id, schema_name || '.' || table_name AS name, total_bytes, n_dead_tup
FROM csl_ops.perf_snapshot_tables
WHERE snapshot_id = ANY(%(snapshot_ids)s) AND relid = ANY(%(relids)s)
