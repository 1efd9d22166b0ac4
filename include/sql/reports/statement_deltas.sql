-- pg_stat_statements activity between two snapshots, per query id (users summed). A row counts from zero — its end values are the activity — when there is no baseline,
-- when the statistics were reset in between (stats_reset moved, or the server restarted), when the
-- entry is new, or when any of its counters went down (the entry was deallocated and re-added):
-- never a negative figure. Parameterized (%(end_id)s, %(base_id)s which may be NULL).
WITH e_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(end_id)s),
b_snap AS (SELECT * FROM csl_ops.perf_snapshots WHERE id = %(base_id)s),
reset AS (
    SELECT NOT EXISTS (SELECT 1 FROM b_snap)
           OR (SELECT b.pgss_stats_reset IS DISTINCT FROM e.pgss_stats_reset
                      OR b.postmaster_start IS DISTINCT FROM e.postmaster_start
                 FROM b_snap b, e_snap e) AS between
),
pairs AS (
    SELECT e.*, b.calls IS NULL OR (SELECT between FROM reset)
                OR e.calls < b.calls OR e.total_exec_time < b.total_exec_time OR e.rows < b.rows
                OR e.shared_blks_hit < b.shared_blks_hit OR e.shared_blks_read < b.shared_blks_read
                OR e.temp_blks_written < b.temp_blks_written AS fresh,
           b.calls AS b_calls, b.total_exec_time AS b_total, b.rows AS b_rows,
           b.shared_blks_hit AS b_hit, b.shared_blks_read AS b_read, b.shared_blks_dirtied AS b_dirtied,
           b.temp_blks_read AS b_temp_read, b.temp_blks_written AS b_temp_written, b.blk_read_time AS b_read_time,
           bool_or(e.toplevel) OVER (PARTITION BY e.queryid) AS has_toplevel
    FROM csl_ops.perf_snapshot_statements e
    LEFT JOIN csl_ops.perf_snapshot_statements b
           ON b.snapshot_id = %(base_id)s AND b.queryid = e.queryid AND b.userid = e.userid AND b.toplevel = e.toplevel
    WHERE e.snapshot_id = %(end_id)s
)
SELECT p.queryid,
       q.query,
       sum(CASE WHEN fresh THEN calls ELSE calls - b_calls END)::bigint                          AS calls,
       sum(CASE WHEN fresh THEN total_exec_time ELSE total_exec_time - b_total END)::float8     AS total_ms,
       sum(CASE WHEN fresh THEN rows ELSE rows - b_rows END)::bigint                             AS rows,
       sum(CASE WHEN fresh THEN shared_blks_hit ELSE shared_blks_hit - b_hit END)::bigint        AS shared_blks_hit,
       sum(CASE WHEN fresh THEN shared_blks_read ELSE shared_blks_read - b_read END)::bigint     AS shared_blks_read,
       sum(CASE WHEN fresh THEN shared_blks_dirtied ELSE shared_blks_dirtied - b_dirtied END)::bigint AS shared_blks_dirtied,
       sum(CASE WHEN fresh THEN temp_blks_read ELSE temp_blks_read - b_temp_read END)::bigint    AS temp_blks_read,
       sum(CASE WHEN fresh THEN temp_blks_written ELSE temp_blks_written - b_temp_written END)::bigint AS temp_blks_written,
       sum(CASE WHEN fresh THEN blk_read_time ELSE blk_read_time - b_read_time END)::float8     AS blk_read_ms,
       bool_or(fresh AND b_calls IS NOT NULL)                                                     AS counted_from_reset
FROM pairs p
LEFT JOIN csl_ops.perf_queries q ON q.queryid = p.queryid
-- top-level executions only when there are any: nested ones (pg_stat_statements.track = all:
-- statements inside functions, or this report's own EXPLAIN EXECUTE) are already inside them
WHERE p.toplevel OR NOT p.has_toplevel
GROUP BY p.queryid, q.query
