-- Every index on a user table with what decides whether it may ever be suggested for removal:
-- unique, primary key, backs a constraint (pg_constraint.conindid: unique, exclusion, primary key
-- or a foreign key's referenced key), valid/ready; and what makes two indexes comparable
-- (access method, key columns, operator classes, collations, expressions, predicate).
SELECT i.indexrelid,
       n.nspname                                        AS schema_name,
       t.relname                                        AS table_name,
       ic.relname                                       AS index_name,
       am.amname                                        AS method,
       i.indisunique                                    AS is_unique,
       i.indisprimary                                   AS is_primary,
       EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid) AS backs_constraint,
       i.indisvalid                                     AS is_valid,
       i.indisready                                     AS is_ready,
       i.indnkeyatts                                    AS key_count,
       string_to_array(i.indkey::text, ' ')::int[]      AS columns,
       string_to_array(i.indclass::text, ' ')::oid[]    AS opclasses,
       string_to_array(i.indcollation::text, ' ')::oid[] AS collations,
       string_to_array(i.indoption::text, ' ')::int[]   AS options,
       pg_get_expr(i.indexprs, i.indrelid)              AS expressions,
       pg_get_expr(i.indpred, i.indrelid)               AS predicate,
       pg_get_indexdef(i.indexrelid)                    AS definition,
       ic.relpages::bigint * current_setting('block_size')::bigint AS size_bytes
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND t.relkind IN ('r', 'm', 'p')
ORDER BY n.nspname, t.relname, ic.relname
