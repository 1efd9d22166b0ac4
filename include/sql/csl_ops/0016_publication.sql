-- Publication (issue 12, item 11): the provider's bucket is private; approved samples are
-- copied into its published bucket, the only one anyone may read (csl.publication).
-- published_objects is what is public now and which original it was copied from;
-- publication_events is the history, and with edge_purged = false the purges still owed.
SET LOCAL lock_timeout = '10s';

CREATE TABLE csl_ops.published_objects (
    provider     text        NOT NULL,
    object_key   text        NOT NULL,
    size         bigint      NOT NULL CHECK (size >= 0),
    source_etag  text        NOT NULL,
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    published_at timestamptz NOT NULL DEFAULT now(),
    run_key      text        NOT NULL,
    PRIMARY KEY (provider, object_key)
);
COMMENT ON TABLE csl_ops.published_objects IS
    'One row per object copied into a provider''s published (public-read) bucket: the original''s size and '
    'ETag when copied, the SHA-256 the copy was verified with.';

CREATE TABLE csl_ops.publication_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text        NOT NULL,
    object_key  text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('published', 'republished', 'withdrawn', 'copy_refused')),
    run_key     text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    edge_purged boolean,
    detail      jsonb       NOT NULL DEFAULT '{}'
);
COMMENT ON COLUMN csl_ops.publication_events.edge_purged IS
    'NULL: nothing the edge could hold (a refused copy); false: a purge is owed (the next run, or the CDN '
    'module, sends it; a new copy too: the edge may hold the 404 it answered before); true: sent.';
CREATE INDEX publication_events_purge_owed ON csl_ops.publication_events (provider, id) WHERE edge_purged = false;
CREATE INDEX publication_events_key ON csl_ops.publication_events (provider, object_key, at);
