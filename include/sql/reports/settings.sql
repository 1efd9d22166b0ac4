-- Server settings the report's judgements depend on.
SELECT name, setting, unit FROM pg_settings
WHERE name IN ('autovacuum_freeze_max_age', 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold',
               'autovacuum_analyze_scale_factor', 'autovacuum_analyze_threshold', 'idle_in_transaction_session_timeout',
               'max_connections', 'shared_buffers', 'track_io_timing', 'pg_stat_statements.max', 'server_version')
