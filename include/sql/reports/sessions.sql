-- Sessions of this database that matter now: running or idle in transaction for longer than the
-- threshold, or waiting on a lock. A query text that may carry a secret is replaced by its command
-- words (csl_ops.carries_secret); the report shows the others without their literals. Parameterized.
SELECT pid, usename AS user_name, application_name, state, wait_event_type, wait_event,
       round(extract(epoch FROM now() - xact_start)::numeric, 1)  AS xact_age_s,
       round(extract(epoch FROM now() - query_start)::numeric, 1) AS query_age_s,
       round(extract(epoch FROM now() - state_change)::numeric, 1) AS state_age_s,
       CASE WHEN csl_ops.carries_secret(query) THEN csl_ops.redacted_statement(query)
            ELSE left(query, 2000) END                             AS query
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (   (state = 'active' AND now() - query_start > make_interval(secs => %(long_running_s)s))
       OR (state LIKE 'idle in transaction%%' AND now() - state_change > make_interval(secs => %(idle_in_xact_s)s))
       OR wait_event_type = 'Lock')
ORDER BY xact_start NULLS LAST
