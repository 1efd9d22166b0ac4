-- pg_stat_statements counters of this database into a snapshot, and each query's current text
-- (pg_stat_statements keeps the text first seen for a query id; it changes after a reset). A
-- text that may carry a secret (utility statements are kept verbatim: ALTER ROLE … PASSWORD '…')
-- is stored as its command words only (csl_ops.carries_secret, 0013). Parameterized (%(snapshot_id)s).
WITH s AS (
    SELECT * FROM pg_stat_statements(true)
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND queryid IS NOT NULL
), texts AS (
    INSERT INTO csl_ops.perf_queries (queryid, query)
    -- the text a person wrote: top-level over nested, never the report's own PREPARE of it
    SELECT DISTINCT ON (queryid) queryid,
           CASE WHEN csl_ops.carries_secret(query) THEN csl_ops.redacted_statement(query) ELSE query END
    FROM s
    ORDER BY queryid, query LIKE '/* csl:perf-report */%%', toplevel DESC
    ON CONFLICT (queryid) DO UPDATE SET query = excluded.query WHERE perf_queries.query <> excluded.query
)
INSERT INTO csl_ops.perf_snapshot_statements
    (snapshot_id, queryid, userid, toplevel, calls, total_exec_time, rows, shared_blks_hit,
     shared_blks_read, shared_blks_dirtied, temp_blks_read, temp_blks_written, blk_read_time)
SELECT %(snapshot_id)s, queryid, userid, toplevel, calls, total_exec_time, rows, shared_blks_hit,
       shared_blks_read, shared_blks_dirtied, temp_blks_read, temp_blks_written, blk_read_time
FROM s
