-- Read on a replica for a snapshot, in one statement: who answered (address:port, whether it is
-- in recovery, when it started, this database's statistics reset — either resets its counters)
-- and every user index's scan counter there (a hot standby counts its own scans).
SELECT coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port()::text, current_setting('port'))
                                                               AS server,
       pg_is_in_recovery()                                     AS in_recovery,
       pg_postmaster_start_time()                              AS postmaster_start,
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()) AS stats_reset,
       current_database()                                      AS database_name,
       coalesce(i.indexrelids, '{}')                           AS indexrelids,
       coalesce(i.scans, '{}')                                 AS scans
FROM (SELECT array_agg(indexrelid::bigint ORDER BY indexrelid) AS indexrelids,
             array_agg(coalesce(idx_scan, 0) ORDER BY indexrelid) AS scans
      FROM pg_stat_user_indexes) i
