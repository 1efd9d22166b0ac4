-- Retention: snapshots older than the cutoff go (their rows cascade); the snapshot a kept
-- report was made from is kept only as long as the retention says. Parameterized.
DELETE FROM csl_ops.perf_snapshots WHERE taken_at < now() - make_interval(days => %(days)s)
