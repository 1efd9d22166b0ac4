-- csl_ops.replication_queue: objects that exist on one provider but must be copied to
-- another — written when an upload fell back to the fallback provider (the primary failed),
-- drained by the replication pipeline. Never lost: a row stays until it is done.

CREATE TABLE csl_ops.replication_queue (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_key      text        NOT NULL,
    source_provider text        NOT NULL,
    target_provider text        NOT NULL,
    reason          text        NOT NULL,
    sha256          text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz
);
-- one pending copy per object and target: a re-upload during the outage refreshes it
CREATE UNIQUE INDEX replication_queue_pending_key ON csl_ops.replication_queue (object_key, target_provider)
    WHERE status = 'pending';
