-- csl_ops storage integrity: each sweep, what each shard covered, and the findings it keeps
-- open until a later sweep of the same cell no longer sees them; and the quarantine that the
-- cleanup moves objects into (restorable) instead of deleting them.

CREATE TABLE csl_ops.storage_sweeps (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key      text        NOT NULL UNIQUE,     -- Airflow run id, or cli:<uuid>
    providers    text[]      NOT NULL,
    key_order    text        NOT NULL CHECK (key_order IN ('path', 'byte')),
    params       jsonb       NOT NULL DEFAULT '{}',
    cells        integer     NOT NULL DEFAULT 0,
    status       text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    summary      jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- one row per shard and attempt outcome; a retried shard overwrites its row
CREATE TABLE csl_ops.storage_sweep_shards (
    sweep_id     bigint      NOT NULL REFERENCES csl_ops.storage_sweeps (id) ON DELETE CASCADE,
    shard        integer     NOT NULL,
    cells        text[]      NOT NULL,
    status       text        NOT NULL CHECK (status IN ('done', 'failed')),
    summary      jsonb,
    error        text,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sweep_id, shard)
);

CREATE TABLE csl_ops.storage_findings (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text        NOT NULL CHECK (kind IN ('missing', 'orphan', 'size_mismatch',
                                                          'checksum_mismatch', 'fallback_only')),
    object_key        text        NOT NULL,
    provider          text        NOT NULL,
    cell              text        NOT NULL,        -- the key prefix cell whose sweep can close it
    detail            jsonb       NOT NULL DEFAULT '{}',
    first_sweep_id    bigint      NOT NULL REFERENCES csl_ops.storage_sweeps (id),
    last_sweep_id     bigint      NOT NULL REFERENCES csl_ops.storage_sweeps (id),
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    resolved_sweep_id bigint REFERENCES csl_ops.storage_sweeps (id)
);
-- a finding is open once: a later sweep that sees it again updates it instead of duplicating
CREATE UNIQUE INDEX storage_findings_open_key ON csl_ops.storage_findings (kind, object_key, provider)
    WHERE resolved_at IS NULL;
CREATE INDEX storage_findings_open_cell ON csl_ops.storage_findings (cell) WHERE resolved_at IS NULL;

CREATE TABLE csl_ops.storage_quarantine (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider         text        NOT NULL,
    object_key       text        NOT NULL,         -- where it was
    quarantine_key   text        NOT NULL,         -- where it is now
    reason           text        NOT NULL CHECK (reason IN ('expired_upload', 'orphan')),
    size_bytes       bigint      NOT NULL,
    etag             text        NOT NULL,
    run_key          text        NOT NULL,
    moved_at         timestamptz NOT NULL DEFAULT now(),
    restored_at      timestamptz,
    purged_at        timestamptz
);
-- an object sits in quarantine once at a time
CREATE UNIQUE INDEX storage_quarantine_active ON csl_ops.storage_quarantine (provider, object_key)
    WHERE restored_at IS NULL AND purged_at IS NULL;
