-- csl_ops.task_runs: one row per pipeline task run that changed or checked anything,
-- with its parameters, outcome and figures. A retry of the same task instance updates the
-- same row (keyed by dag/task/run/map index), so the table never double-counts.

CREATE TABLE csl_ops.task_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id       text        NOT NULL,
    task_id      text        NOT NULL,
    run_id       text        NOT NULL,
    map_index    integer     NOT NULL DEFAULT -1,
    try_number   integer     NOT NULL DEFAULT 1,
    status       text        NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    params       jsonb       NOT NULL DEFAULT '{}',
    outcome      jsonb       NOT NULL DEFAULT '{}',
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (dag_id, task_id, run_id, map_index)
);
CREATE INDEX task_runs_dag_started_idx ON csl_ops.task_runs (dag_id, started_at DESC);

COMMENT ON TABLE csl_ops.task_runs IS
    'One row per pipeline task run (Airflow task instance or CLI run); retries update the row.';
COMMENT ON COLUMN csl_ops.task_runs.outcome IS 'Small JSON summary: figures the reports read.';

CREATE TABLE csl_ops.seed_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scale       text        NOT NULL,
    seed        integer     NOT NULL,
    counts      jsonb       NOT NULL,
    defects     jsonb       NOT NULL DEFAULT '{}',
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE csl_ops.seed_runs IS
    'Synthetic data loads (dev/test/bench only): counts and the deliberate storage defects.';
