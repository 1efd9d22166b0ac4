-- csl_ops.maintenance_actions: one row per VACUUM/ANALYZE the maintenance pipeline chose,
-- with the reason it was chosen and the table's figures before and after (dead tuples, size,
-- frozen-xid age), so the performance report can show what each night changed.

CREATE TABLE csl_ops.maintenance_actions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       text        NOT NULL,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    reason       text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('vacuum', 'vacuum_freeze', 'analyze')),
    status       text        NOT NULL CHECK (status IN ('done', 'skipped_locked', 'skipped_budget', 'failed', 'dry_run')),
    evidence     jsonb       NOT NULL DEFAULT '{}',
    before       jsonb       NOT NULL DEFAULT '{}',
    after        jsonb       NOT NULL DEFAULT '{}',
    duration_ms  integer     NOT NULL DEFAULT 0,
    error        text,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, schema_name, table_name)
);
CREATE INDEX maintenance_actions_table_finished_idx
    ON csl_ops.maintenance_actions (schema_name, table_name, finished_at DESC);

COMMENT ON TABLE csl_ops.maintenance_actions IS
    'VACUUM/ANALYZE actions of csl_db_maintenance: reason, before/after figures; a retry updates its row.';
