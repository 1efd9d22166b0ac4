-- A shard's findings (staged in the temp table shard_findings) become open findings: new ones
-- are inserted, ones already open are refreshed (never duplicated). Returns how many were new.
WITH upserted AS (
    INSERT INTO csl_ops.storage_findings AS f (kind, object_key, provider, cell, detail, depends_on,
                                               first_sweep_id, last_sweep_id)
    SELECT kind, object_key, provider, cell, detail, depends_on, %(sweep)s, %(sweep)s FROM shard_findings
    ON CONFLICT (kind, object_key, provider) WHERE resolved_at IS NULL
    DO UPDATE SET last_sweep_id = excluded.last_sweep_id, last_seen_at = now(),
                  detail = excluded.detail, cell = excluded.cell, depends_on = excluded.depends_on
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
