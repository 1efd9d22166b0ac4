-- Can the index advisor plan as this role? One row when it exists: whether the current user may
-- SET ROLE to it, whether it is a superuser, and the first table of this database it could write
-- (insert, update, delete or truncate; NULL: none) — the advisor must never be able to write.
-- Parameterized (%(role)s).
SELECT pg_has_role(current_user, r.oid, 'MEMBER') AS member,
       r.rolsuper                                  AS superuser,
       (SELECT format('%%I.%%I', n.nspname, c.relname)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
           AND (has_any_column_privilege(r.oid, c.oid, 'INSERT, UPDATE')
                OR has_table_privilege(r.oid, c.oid, 'DELETE, TRUNCATE'))
         ORDER BY 1 LIMIT 1)                       AS writable
FROM pg_roles r
WHERE r.rolname = %(role)s
