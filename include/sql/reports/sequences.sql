-- Sequences and how close each is to exhaustion: the sequence's own maximum, or the maximum of
-- the integer column it feeds when that is smaller (a bigint sequence behind an int4 column).
SELECT s.schemaname AS schema_name, s.sequencename AS sequence_name, s.data_type::text AS sequence_type,
       s.last_value, s.increment_by,
       col.table_name, col.column_name, col.column_type,
       least(s.max_value, CASE col.column_type WHEN 'integer' THEN 2147483647
                                              WHEN 'smallint' THEN 32767 ELSE s.max_value END) AS max_value,
       CASE WHEN s.last_value IS NULL THEN 0
            ELSE round(100.0 * (s.last_value - s.min_value)
                       / nullif(least(s.max_value, CASE col.column_type WHEN 'integer' THEN 2147483647
                                                          WHEN 'smallint' THEN 32767 ELSE s.max_value END)
                                - s.min_value, 0), 4) END AS used_pct
FROM pg_sequences s
LEFT JOIN LATERAL (
    SELECT t.relname AS table_name, a.attname AS column_name, format_type(a.atttypid, NULL) AS column_type
    FROM pg_class seq
    JOIN pg_namespace sn ON sn.oid = seq.relnamespace
    JOIN pg_depend d ON d.objid = seq.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
    JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
    WHERE sn.nspname = s.schemaname AND seq.relname = s.sequencename
    LIMIT 1
) col ON true
ORDER BY used_pct DESC NULLS LAST
