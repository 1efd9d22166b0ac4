-- Performance reports you can trust (issue 12, items 14 and 17).
--
-- 1. Secrets. PostgreSQL keeps utility statements verbatim in pg_stat_statements
--    (ALTER ROLE … PASSWORD '…', CREATE USER MAPPING … OPTIONS (password '…'), …) and
--    pg_stat_activity shows every text with its literals. csl_ops.carries_secret() is the one
--    rule for "this text may carry a password, token or key": a secret-looking word together with
--    a literal, or in a statement that is not plain DML (whose constants pg_stat_statements has
--    already replaced by $n), or a URL with a password. Such texts are stored and shown as
--    csl_ops.redacted_statement(): the command's first words only. The snapshot applies it when it
--    copies query texts; the report applies it to session texts (and shows every other session
--    text without its literals). Rows stored before this migration are cleaned below.
-- 2. Index usage on the replicas. A hot standby counts its own index scans; an index the platform
--    only uses through the read replica looks unused on the primary. Each snapshot now records,
--    per replica it was given, whether it could be read and the scan counter of every index there.
-- 3. Report retention. Reports past their retention are deleted; the folders of deleted reports
--    are queued in perf_report_purges until the process that owns the files has removed them.
SET LOCAL lock_timeout = '10s';

CREATE FUNCTION csl_ops.carries_secret(query text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURNS NULL ON NULL INPUT
RETURN query ~* '[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]*@'
    OR (query ~* '(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|sslkey|bearer|authorization|\m(pgp_[a-z_]+|hmac|crypt|encrypt|decrypt|encrypt_iv|decrypt_iv)\s*\()'
        AND (query ~ '''|\$([A-Za-z_][A-Za-z0-9_]*)?\$'
             OR query !~* '^\s*\(*\s*(select|insert|update|delete|with|values|table|merge)\M'));

COMMENT ON FUNCTION csl_ops.carries_secret(text) IS
    'True when a query text may carry a password, token or key (see 0013_reports_trust.sql): '
    'never stored or shown as is.';

CREATE FUNCTION csl_ops.redacted_statement(query text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURNS NULL ON NULL INPUT
RETURN upper(coalesce(substring(query FROM '^\s*([A-Za-z]+)'), 'statement'))
    || coalesce(' ' || upper(substring(query FROM
           '(?i)^\s*[a-z]+\s+(role|user|group|server|subscription|system|database|extension|session|foreign|local)\M')), '')
    || ' … (redacted: may carry a secret)';

COMMENT ON FUNCTION csl_ops.redacted_statement(text) IS
    'What is kept of a text that carries_secret(): its command words, '
    'e.g. ALTER ROLE … (redacted: may carry a secret).';

CREATE TABLE csl_ops.perf_snapshot_replicas (
    snapshot_id      bigint      NOT NULL REFERENCES csl_ops.perf_snapshots (id) ON DELETE CASCADE,
    replica          text        NOT NULL,  -- the name the snapshot was given ("replica": DATABASE_READ_REPLICA_URL)
    status           text        NOT NULL CHECK (status IN ('ok', 'unavailable')),
    error            text,                  -- why it could not be read (one line, no credentials)
    server           text,                  -- address:port as the replica answered
    in_recovery      boolean,
    postmaster_start timestamptz,           -- a restart resets its counters…
    stats_reset      timestamptz,           -- …and so does pg_stat_reset() there
    PRIMARY KEY (snapshot_id, replica),
    CHECK (status = 'unavailable' OR (server IS NOT NULL AND postmaster_start IS NOT NULL))
);

CREATE TABLE csl_ops.perf_snapshot_replica_indexes (
    snapshot_id bigint NOT NULL,
    replica     text   NOT NULL,
    indexrelid  oid    NOT NULL,  -- a physical standby has the primary's catalog: the same oids
    idx_scan    bigint NOT NULL,
    PRIMARY KEY (snapshot_id, replica, indexrelid),
    FOREIGN KEY (snapshot_id, replica) REFERENCES csl_ops.perf_snapshot_replicas (snapshot_id, replica)
        ON DELETE CASCADE
);

CREATE TABLE csl_ops.perf_report_purges (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path      text        NOT NULL,          -- the deleted report's folder
    reason    text        NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE csl_ops.perf_snapshot_replicas IS
    'Per snapshot and replica: read or not (why), and its server lifetime and statistics reset.';
COMMENT ON TABLE csl_ops.perf_snapshot_replica_indexes IS
    'Per snapshot and replica: each index''s scan counter there (the replica counts its own scans).';
COMMENT ON TABLE csl_ops.perf_report_purges IS
    'Folders of deleted reports still to be removed from disk (by the next snapshot or report run).';

-- Texts stored before this migration: the same rule as every capture from now on.
UPDATE csl_ops.perf_queries SET query = csl_ops.redacted_statement(query)
WHERE csl_ops.carries_secret(query) AND query <> csl_ops.redacted_statement(query);

-- Reports made before this migration showed session texts with their literals and texts that may
-- carry secrets, in their data and their HTML page alike: those reports are deleted (the
-- snapshots they were made from remain) and their folders queued for removal.
WITH dirty AS (
    DELETE FROM csl_ops.perf_reports r
    WHERE EXISTS (SELECT 1 FROM jsonb_path_query(r.data, 'lax $.tables.sessions[*].query ? (@.type() == "string")') q
                  WHERE q #>> '{}' <> '')
       OR EXISTS (SELECT 1 FROM jsonb_path_query(r.data, 'strict $.** ? (@.type() == "string")', '{}', true) v
                  WHERE csl_ops.carries_secret(v #>> '{}'))
    RETURNING r.path
)
INSERT INTO csl_ops.perf_report_purges (path, reason)
SELECT path, 'made before 0013: may show secrets or session literals' FROM dirty WHERE path IS NOT NULL;
