-- Estimated table bloat: the widely used estimation from statistics (ioguix/pgsql-bloat-estimation,
-- "table bloat" query): expected pages from pg_stats' average widths and null fractions, tuple
-- header and alignment, fillfactor, compared with relpages. An estimate — cheap, no table read;
-- exact figures need pgstattuple_approx (tuple_stats.sql, on request).
SELECT schema_name, table_name, real_bytes, expected_bytes,
       greatest(real_bytes - expected_bytes, 0)                                 AS bloat_bytes,
       CASE WHEN real_bytes > 0 THEN round((100.0 * greatest(real_bytes - expected_bytes, 0) / real_bytes)::numeric, 1)
            ELSE 0 END                                                           AS bloat_pct,
       fillfactor, is_na
FROM (
    SELECT schemaname AS schema_name, tblname AS table_name, bs * tblpages AS real_bytes,
           (ceil(reltuples / ((bs - page_hdr) * fillfactor / (tpl_size * 100))) + ceil(toasttuples / 4)) * bs
               AS expected_bytes,
           fillfactor, is_na
    FROM (
        SELECT tblpages, fillfactor, bs, tblid, schemaname, tblname, is_na, reltuples, toasttuples, page_hdr,
               (4 + tpl_hdr_size + tpl_data_size + (2 * ma)
                - CASE WHEN tpl_hdr_size % ma = 0 THEN ma ELSE tpl_hdr_size % ma END
                - CASE WHEN ceil(tpl_data_size)::int % ma = 0 THEN ma ELSE ceil(tpl_data_size)::int % ma END
               ) AS tpl_size
        FROM (
            SELECT tbl.oid AS tblid, ns.nspname AS schemaname, tbl.relname AS tblname, tbl.reltuples,
                   tbl.relpages AS heappages, coalesce(toast.relpages, 0) AS toastpages,
                   coalesce(toast.reltuples, 0) AS toasttuples,
                   coalesce(substring(array_to_string(tbl.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::smallint, 100) AS fillfactor,
                   current_setting('block_size')::numeric AS bs,
                   CASE WHEN version() ~ 'mingw32' OR version() ~ '64-bit|x86_64|ppc64|ia64|amd64' THEN 8 ELSE 4 END AS ma,
                   24 AS page_hdr,
                   23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0 THEN (7 + count(s.attname)) / 8 ELSE 0::int END
                      + CASE WHEN bool_or(att.attname = 'oid' AND att.attnum < 0) THEN 4 ELSE 0 END AS tpl_hdr_size,
                   sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) AS tpl_data_size,
                   bool_or(att.atttypid = 'pg_catalog.name'::regtype)
                   OR sum(CASE WHEN att.attnum > 0 THEN 1 ELSE 0 END) <> count(s.attname) AS is_na,
                   tbl.relpages + coalesce(toast.relpages, 0) AS tblpages
            FROM pg_attribute att
            JOIN pg_class tbl ON att.attrelid = tbl.oid
            JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
            LEFT JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = tbl.relname
                                AND s.inherited = false AND s.attname = att.attname
            LEFT JOIN pg_class toast ON tbl.reltoastrelid = toast.oid
            WHERE NOT att.attisdropped AND tbl.relkind IN ('r', 'm')
              AND ns.nspname NOT IN ('pg_catalog', 'information_schema') AND ns.nspname !~ '^pg_toast'
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
        ) s
    ) s2
) s3
ORDER BY bloat_bytes DESC
