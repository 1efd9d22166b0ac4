-- Open findings in the swept cells (under the swept prefix) that this shard no longer saw
-- are resolved by it, when it swept every provider the finding depends on (its own, and the
-- reference copy it was compared with). Cells or providers that were not swept keep theirs, and
-- only the kinds the sweep produces are closed (replication closes its replication_conflict findings).
UPDATE csl_ops.storage_findings f
SET resolved_at = now(), resolved_sweep_id = %(sweep)s
WHERE f.resolved_at IS NULL
  AND f.kind = ANY(%(kinds)s)
  AND f.cell = ANY(%(cells)s)
  AND starts_with(f.object_key, %(prefix)s)
  AND f.depends_on <@ %(providers)s::text[]
  AND NOT EXISTS (SELECT 1 FROM shard_findings s
                  WHERE s.kind = f.kind AND s.object_key = f.object_key AND s.provider = f.provider)
