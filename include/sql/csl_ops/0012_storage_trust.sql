-- Storage trust (issue 12): a sweep of some providers closes only what it could judge.
-- Each shard records the providers it swept, and each finding the providers whose listings
-- it depends on: the provider it is about, plus the reference copy it was compared with
-- (fallback_only: the primary; a cross-provider size or checksum mismatch: the provider it
-- was compared with). A sweep closes an unseen finding only when it swept all of them.
SET LOCAL lock_timeout = '10s';

ALTER TABLE csl_ops.storage_sweep_shards ADD COLUMN providers text[];
UPDATE csl_ops.storage_sweep_shards sh SET providers = s.providers
FROM csl_ops.storage_sweeps s WHERE s.id = sh.sweep_id;
ALTER TABLE csl_ops.storage_sweep_shards ALTER COLUMN providers SET NOT NULL;

ALTER TABLE csl_ops.storage_findings ADD COLUMN depends_on text[];
UPDATE csl_ops.storage_findings SET depends_on = CASE
    WHEN kind = 'fallback_only' THEN ARRAY['primary', provider]
    WHEN kind = 'size_mismatch' AND detail ->> 'expected_from' IS DISTINCT FROM 'database'
        THEN ARRAY[coalesce(detail ->> 'expected_from', 'primary'), provider]
    WHEN kind = 'checksum_mismatch' AND detail ->> 'found_by' = 'cross-provider'
        THEN ARRAY[coalesce(detail ->> 'reference', 'primary'), provider]
    ELSE ARRAY[provider]
END;
ALTER TABLE csl_ops.storage_findings ALTER COLUMN depends_on SET NOT NULL;
COMMENT ON COLUMN csl_ops.storage_findings.depends_on IS
    'Providers a sweep must list to judge this finding; only such a sweep may close it.';
