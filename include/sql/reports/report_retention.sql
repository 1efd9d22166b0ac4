-- Report retention: stored reports older than the cutoff are deleted and their folders queued for
-- removal from disk in the same statement (the caller removes them, then dequeues); returns how
-- many reports went. Parameterized (%(days)s).
WITH gone AS (
    DELETE FROM csl_ops.perf_reports WHERE created_at < now() - make_interval(days => %(days)s)
    RETURNING path
), queued AS (
    INSERT INTO csl_ops.perf_report_purges (path, reason)
    SELECT path, 'retention' FROM gone WHERE path IS NOT NULL
    RETURNING id
)
SELECT (SELECT count(*) FROM gone) AS reports, (SELECT count(*) FROM queued) AS queued
