-- Evidence per user table for the VACUUM/ANALYZE pipeline (csl.maintenance.vacuum):
-- activity counters, size, frozen-xid and multixact age, last (auto)vacuum/analyze, and the
-- table's own autovacuum reloptions (NULL where the table has none: the global setting applies).
SELECT s.relid,
       s.schemaname,
       s.relname,
       s.n_live_tup,
       s.n_dead_tup,
       s.n_mod_since_analyze,
       s.n_ins_since_vacuum,
       greatest(c.reltuples, 0)::float8                         AS reltuples,
       c.reltuples < 0                                          AS never_vacuumed_or_analyzed,
       -- size from relpages (kept current by VACUUM/ANALYZE): pg_total_relation_size would
       -- take a lock, and a table someone holds locked must never make us wait
       ((c.relpages + coalesce(t.relpages, 0)
         + coalesce((SELECT sum(ic.relpages) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                     WHERE i.indrelid = c.oid), 0))::bigint
        * current_setting('block_size')::bigint)                AS total_bytes,
       age(c.relfrozenxid)                                      AS xid_age,
       mxid_age(c.relminmxid)                                   AS mxid_age,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       s.vacuum_count + s.autovacuum_count                      AS vacuums,
       s.analyze_count + s.autoanalyze_count                    AS analyzes,
       (SELECT jsonb_object_agg(split_part(o, '=', 1), split_part(o, '=', 2))
          FROM unnest(c.reloptions) o)                          AS reloptions
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind IN ('r', 'm')
ORDER BY s.schemaname, s.relname
