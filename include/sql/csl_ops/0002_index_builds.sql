-- csl_ops.index_builds: one row per index build attempted by the index pipeline
-- (csl_index_install or `python -m csl indexes apply`): what was done, how long it took,
-- how big the index is, and — when it failed — why and who was blocking it.

CREATE TABLE csl_ops.index_builds (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       text        NOT NULL,
    index_name   text        NOT NULL,
    table_name   text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('build', 'rebuild', 'swap')),
    status       text        NOT NULL CHECK (status IN ('success', 'failed')),
    attempts     integer     NOT NULL,
    duration_ms  integer     NOT NULL,
    size_bytes   bigint,
    statement    text,
    error        text,
    blockers     jsonb       NOT NULL DEFAULT '[]',
    cleaned_up   text[]      NOT NULL DEFAULT '{}',
    finished_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, index_name)
);
CREATE INDEX index_builds_name_finished_idx ON csl_ops.index_builds (index_name, finished_at DESC);

COMMENT ON TABLE csl_ops.index_builds IS
    'Index builds by the index pipeline; a retried task updates its row (run_id, index_name).';
