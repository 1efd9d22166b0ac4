-- Replication (issue 14): every provider holds every object the database refers to,
-- byte-identical, proven by SHA-256 (csl.storage.replication).
--
-- replication_runs is one run (an Airflow run, or cli:<uuid>): what it was asked, which
-- database served its inventory, its summary. replication_copies is its plan and log: one row
-- per object and destination, planned -> copied -> verified | failed (or skipped, when the
-- destination already held the right bytes; conflict, when no copy could be trusted). A rerun
-- of the same run skips what is verified and retries the rest. A queue row is done, and a
-- finding resolved, only in the transaction that marks its copy verified.
-- A replication_conflict finding is a key whose right copy cannot be told (two copies that
-- each verify but differ, none that verifies, or a database size no copy has): nothing is
-- overwritten; a person decides. cdn_purge_queue is what the edge must drop because
-- replication replaced (or restored) a public object; the CDN module drains it.
SET LOCAL lock_timeout = '10s';

ALTER TABLE csl_ops.storage_findings DROP CONSTRAINT storage_findings_kind_check;
ALTER TABLE csl_ops.storage_findings ADD CONSTRAINT storage_findings_kind_check
    CHECK (kind IN ('missing', 'orphan', 'size_mismatch', 'checksum_mismatch', 'fallback_only',
                    'replication_conflict'));

CREATE TABLE csl_ops.replication_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key        text        NOT NULL UNIQUE,     -- Airflow run id, or cli:<uuid>
    mode           text        NOT NULL CHECK (mode IN ('queue', 'findings', 'diff')),
    params         jsonb       NOT NULL DEFAULT '{}',
    providers      text[]      NOT NULL,
    sweep_id       bigint REFERENCES csl_ops.storage_sweeps (id),   -- diff mode: the comparison it planned from
    inventory_from text CHECK (inventory_from IN ('primary', 'replica')),
    status         text        NOT NULL DEFAULT 'planning'
                   CHECK (status IN ('planning', 'planned', 'copying', 'done', 'failed', 'refused', 'dry_run')),
    summary        jsonb,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

CREATE TABLE csl_ops.replication_copies (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        bigint      NOT NULL REFERENCES csl_ops.replication_runs (id) ON DELETE CASCADE,
    object_key    text        NOT NULL,
    cell          text        NOT NULL,        -- the sweep's key-prefix cell: how copies are sharded
    source        text,                        -- the provider copied from (NULL for a conflict)
    destination   text        NOT NULL,
    reason        text        NOT NULL,        -- missing, fallback_only, queued, corrupt, size_mismatch, …
    bytes         bigint CHECK (bytes >= 0),
    sha256        text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    method        text CHECK (method IN ('put', 'multipart', 'server_copy')),
    replaces      boolean     NOT NULL DEFAULT false,    -- the destination held other bytes
    status        text        NOT NULL DEFAULT 'planned'
                  CHECK (status IN ('planned', 'copied', 'verified', 'failed', 'skipped', 'conflict')),
    verified_by   text CHECK (verified_by IN ('checksum', 'composite', 'reread')),
    attempts      integer     NOT NULL DEFAULT 0,
    error         text,
    duration_s    double precision,
    queue_ids     bigint[]    NOT NULL DEFAULT '{}', -- replication_queue rows this copy settles
    finding_ids   bigint[]    NOT NULL DEFAULT '{}', -- storage_findings this copy resolves
    planned_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, object_key, destination)
);
CREATE INDEX replication_copies_run_cell ON csl_ops.replication_copies (run_id, cell, object_key);

ALTER TABLE csl_ops.replication_queue ADD COLUMN resolved_run_id bigint REFERENCES csl_ops.replication_runs (id);
-- a conflict is found by a replication run, not a sweep: it names the run instead
ALTER TABLE csl_ops.storage_findings
    ALTER COLUMN first_sweep_id DROP NOT NULL,
    ALTER COLUMN last_sweep_id DROP NOT NULL,
    ADD COLUMN last_replication_id bigint REFERENCES csl_ops.replication_runs (id),
    ADD COLUMN resolved_replication_id bigint REFERENCES csl_ops.replication_runs (id),
    ADD CONSTRAINT storage_findings_found_by CHECK (
        CASE WHEN kind = 'replication_conflict' THEN last_replication_id IS NOT NULL
             ELSE first_sweep_id IS NOT NULL AND last_sweep_id IS NOT NULL END);
COMMENT ON COLUMN csl_ops.storage_findings.last_replication_id IS
    'replication_conflict: the replication run that last found the key''s copies irreconcilable.';
COMMENT ON COLUMN csl_ops.storage_findings.resolved_replication_id IS
    'The replication run whose verified copy resolved this finding (NULL: a sweep resolved it).';

CREATE TABLE csl_ops.cdn_purge_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text        NOT NULL,      -- the storage provider whose public object changed
    object_key  text        NOT NULL,
    public_url  text,                      -- NULL when no edge is configured to say where it is served
    tags        text[]      NOT NULL DEFAULT '{}',
    reason      text        NOT NULL,      -- replaced, restored, deleted, quarantined, …
    source_run  text        NOT NULL,      -- the run key that changed it
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    purged_at   timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text
);
-- one owed purge per object: a second replacement before the purge refreshes it
CREATE UNIQUE INDEX cdn_purge_queue_owed ON csl_ops.cdn_purge_queue (provider, object_key) WHERE purged_at IS NULL;
