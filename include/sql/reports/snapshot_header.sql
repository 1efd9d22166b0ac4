-- One statistics snapshot's header row: the reset times every delta is judged by, and the
-- database-wide figures (counters, connections by state, replicas). Parameterized: %% escaped.
INSERT INTO csl_ops.perf_snapshots
    (database_name, pgss_stats_reset, pgss_dealloc, db_stats_reset, postmaster_start, figures)
SELECT current_database(),
       %(pgss_stats_reset)s,
       %(pgss_dealloc)s,
       d.stats_reset,
       pg_postmaster_start_time(),
       jsonb_build_object(
           'xact_commit', d.xact_commit, 'xact_rollback', d.xact_rollback,
           'blks_read', d.blks_read, 'blks_hit', d.blks_hit,
           'temp_files', d.temp_files, 'temp_bytes', d.temp_bytes, 'deadlocks', d.deadlocks,
           'database_bytes', pg_database_size(current_database()),
           'datfrozenxid_age', (SELECT age(datfrozenxid) FROM pg_database WHERE datname = current_database()),
           'connections', (SELECT coalesce(jsonb_object_agg(state, n), '{}')
                             FROM (SELECT coalesce(state, 'background') AS state, count(*) AS n
                                     FROM pg_stat_activity WHERE backend_type = 'client backend'
                                    GROUP BY 1) c),
           'max_connections', current_setting('max_connections')::int,
           'replicas', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                   'application_name', application_name, 'state', state,
                                   'client_addr', client_addr::text,
                                   'replay_lag_s', extract(epoch FROM replay_lag),
                                   'replay_lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))), '[]')
                          FROM pg_stat_replication))
FROM pg_stat_database d
WHERE d.datname = current_database()
RETURNING id, taken_at
