-- The server's autovacuum and freeze settings, which per-table reloptions may override.
SELECT name, CASE setting WHEN 'on' THEN 1 WHEN 'off' THEN 0 ELSE setting::float8 END
FROM pg_settings
WHERE name IN ('autovacuum', 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_scale_factor',
               'autovacuum_analyze_threshold', 'autovacuum_analyze_scale_factor',
               'autovacuum_vacuum_insert_threshold', 'autovacuum_vacuum_insert_scale_factor',
               'autovacuum_freeze_max_age', 'autovacuum_multixact_freeze_max_age',
               'vacuum_freeze_table_age', 'vacuum_multixact_freeze_table_age')
