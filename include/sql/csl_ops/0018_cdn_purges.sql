-- CDN purges (issue 15): every batch sent to a CDN provider, so a rerun never sends a confirmed
-- batch again and a batch that failed is retried without losing the others. A batch is the
-- provider's unit of work (≤ its limit of URLs, tags or prefixes per call); batch_id is derived
-- from the run, the target and the items (CloudFront's CallerReference), so the same batch keeps
-- its id across retries. queue_ids ties a batch to the cdn_purge_queue rows it satisfies: they are
-- marked purged when the batch is done (on reply, or when the provider says its asynchronous
-- purge completed).
SET LOCAL lock_timeout = '10s';

CREATE TABLE csl_ops.cdn_purges (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id     text        NOT NULL UNIQUE CHECK (batch_id ~ '^[0-9a-f]{32}$'),
    run_key      text        NOT NULL,
    provider     text        NOT NULL,
    zone         text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('url', 'tag', 'prefix', 'everything')),
    items        text[]      NOT NULL,
    queue_ids    bigint[]    NOT NULL DEFAULT '{}',
    status       text        NOT NULL DEFAULT 'planned'
                             CHECK (status IN ('planned', 'sending', 'pending', 'done', 'failed', 'split')),
    request_id   text,                   -- Cloudflare's purge id, CloudFront's invalidation id, Azure's operation URL
    purged       integer,                -- cached objects dropped, where the provider says (the Varnish edge)
    attempts     integer     NOT NULL DEFAULT 0,
    error        text,
    detail       jsonb       NOT NULL DEFAULT '{}',
    parent_id    bigint      REFERENCES csl_ops.cdn_purges (id),  -- the batch this half was split from
    planned_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    completed_at timestamptz,
    CHECK (status <> 'pending' OR request_id IS NOT NULL),
    CHECK (kind = 'everything' OR cardinality(items) > 0)
);
CREATE INDEX cdn_purges_run ON csl_ops.cdn_purges (run_key);
CREATE INDEX cdn_purges_open ON csl_ops.cdn_purges (status) WHERE status IN ('planned', 'sending', 'pending');
COMMENT ON TABLE csl_ops.cdn_purges IS
    'One row per purge batch sent (or to be sent) to a CDN provider: its items, the provider''s request id, '
    'status (planned → sending → pending → done | failed; split when the provider refused its size and it '
    'was sent as two halves), attempts and timings.';

ALTER TABLE csl_ops.cdn_purge_queue ADD COLUMN purge_id bigint REFERENCES csl_ops.cdn_purges (id);
COMMENT ON COLUMN csl_ops.cdn_purge_queue.purge_id IS 'The batch that purged (or last tried to purge) this row.';
CREATE INDEX cdn_purge_queue_owed_at ON csl_ops.cdn_purge_queue (enqueued_at) WHERE purged_at IS NULL;
