-- Licences the run cannot settle as they are; each becomes a finding and fails the gate.
CREATE TEMP TABLE held (license_id uuid, kind text, detail jsonb) ON COMMIT DROP;
INSERT INTO held
SELECT license_id, 'price_out_of_range', jsonb_build_object('price', price) FROM due
 WHERE NOT price_raw BETWEEN 0 AND 1e15  -- negative, NaN, infinite or absurd
UNION ALL
SELECT license_id, 'sub_cent_price', jsonb_build_object('price', price) FROM due
 WHERE price_raw BETWEEN 0 AND 1e15 AND price_raw <> round(price_raw)
UNION ALL
SELECT license_id, 'no_currency', jsonb_build_object('currency', currency) FROM due
 WHERE currency IS NULL OR currency !~ '^[a-z]{3}$'
UNION ALL
SELECT license_id, 'sample_without_contributor', '{}'::jsonb FROM due WHERE kind = 'direct' AND sample_contributor IS NULL;

-- Generation licences: contributors weighted by how many of the source samples are theirs.
CREATE TEMP TABLE weights ON COMMIT DROP AS
SELECT d.license_id, a.contributor_id, count(*)::bigint AS weight
FROM due d
CROSS JOIN LATERAL unnest(d.source_samples) AS src(sample_id)
JOIN audio_samples a ON a.id::text = src.sample_id
WHERE d.kind = 'generation'
GROUP BY d.license_id, a.contributor_id;

INSERT INTO held
SELECT d.license_id, 'unknown_source_samples',
       jsonb_build_object('source_samples', d.source_samples, 'resolved', coalesce(w.resolved, 0))
FROM due d
LEFT JOIN (SELECT license_id, sum(weight) AS resolved FROM weights GROUP BY 1) w USING (license_id)
WHERE d.kind = 'generation'
  AND (coalesce(w.resolved, 0) <> coalesce(cardinality(d.source_samples), 0)
       OR coalesce(cardinality(d.source_samples), 0) = 0);  -- no source samples (or no generation): no contributor
