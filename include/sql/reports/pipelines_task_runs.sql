-- What our pipelines did in the window: per DAG task, runs, failures, durations, the last outcome.
-- Parameterized (%(start)s, %(end)s).
SELECT dag_id, task_id,
       count(*)                                              AS runs,
       count(*) FILTER (WHERE status = 'failed')             AS failed,
       (array_agg(status ORDER BY started_at DESC))[1]       AS last_status,
       max(finished_at)                                      AS last_finished_at,
       round(avg(extract(epoch FROM finished_at - started_at))::numeric, 2) AS avg_duration_s,
       round(max(extract(epoch FROM finished_at - started_at))::numeric, 2) AS max_duration_s,
       (array_agg(error ORDER BY started_at DESC) FILTER (WHERE error IS NOT NULL))[1] AS last_error
FROM csl_ops.task_runs
WHERE started_at >= %(start)s AND started_at <= %(end)s
GROUP BY dag_id, task_id
ORDER BY dag_id, task_id
