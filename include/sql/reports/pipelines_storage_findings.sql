-- Storage integrity findings (csl_storage_integrity) by kind and provider: still open, new in
-- the window, resolved in the window. Parameterized (%(start)s, %(end)s).
SELECT kind, provider,
       count(*) FILTER (WHERE resolved_at IS NULL)                                      AS open,
       count(*) FILTER (WHERE first_seen_at >= %(start)s AND first_seen_at <= %(end)s)  AS new_in_window,
       count(*) FILTER (WHERE resolved_at >= %(start)s AND resolved_at <= %(end)s)      AS resolved_in_window,
       max(last_seen_at)                                                                AS last_seen_at
FROM csl_ops.storage_findings
GROUP BY kind, provider
ORDER BY open DESC, kind, provider
