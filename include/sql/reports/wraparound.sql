-- Transaction-ID and multixact wraparound: each database's oldest unfrozen xid age against
-- autovacuum_freeze_max_age and the 2^31 hard limit.
SELECT datname AS database_name,
       age(datfrozenxid)        AS xid_age,
       mxid_age(datminmxid)     AS mxid_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age,
       round(100.0 * age(datfrozenxid) / 2147483647, 2) AS pct_to_wraparound
FROM pg_database
WHERE datallowconn
ORDER BY xid_age DESC
