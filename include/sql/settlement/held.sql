-- Licences the run cannot settle as they are; each becomes a (blocking) finding and fails the
-- gate. One pass over the due licences; a licence may have several findings.
CREATE TEMP TABLE held (license_id uuid, kind text, detail jsonb) ON COMMIT DROP;
INSERT INTO held
SELECT d.license_id, f.kind,
       CASE f.kind WHEN 'no_currency' THEN jsonb_build_object('currency', d.currency)
                   WHEN 'unsupported_currency' THEN jsonb_build_object('currency', d.currency)
                   WHEN 'no_payment_intent' THEN jsonb_build_object('payment_intent_id', d.payment_intent_id)
                   WHEN 'payment_not_succeeded' THEN jsonb_build_object('payment_intent_id', d.payment_intent_id,
                                                                        'status', d.intent_status)
                   WHEN 'payment_short' THEN jsonb_build_object('payment_intent_id', d.payment_intent_id,
                                                                'intent_amount', d.intent_amount,
                                                                'intent_minor', d.intent_raw,
                                                                'licences_minor', d.intent_licences_raw)
                   WHEN 'sample_without_contributor' THEN '{}'::jsonb
                   ELSE jsonb_build_object('price', d.price, 'currency', d.currency) END
FROM due d
CROSS JOIN LATERAL (VALUES
    (CASE WHEN NOT d.has_intent THEN 'no_payment_intent' END),
    (CASE WHEN d.has_intent AND (d.currency IS NULL OR d.currency !~ '^[a-z]{3}$') THEN 'no_currency' END),
    (CASE WHEN d.currency ~ '^[a-z]{3}$' AND d.exponent IS NULL THEN 'unsupported_currency' END),
    -- the money arrived: the intent succeeded and its amount covers every licence it pays (and is
    -- finite: a NaN amount would compare above everything)
    (CASE WHEN d.has_intent AND d.intent_status IS DISTINCT FROM 'succeeded' THEN 'payment_not_succeeded' END),
    (CASE WHEN d.intent_status = 'succeeded' AND d.exponent IS NOT NULL
               AND NOT coalesce(d.intent_raw >= d.intent_licences_raw AND d.intent_raw <= 1e15, false)
               THEN 'payment_short' END),
    (CASE WHEN NOT d.price_raw BETWEEN 0 AND 1e15 THEN 'price_out_of_range' END),  -- negative, NaN, infinite or absurd
    (CASE WHEN d.price_raw BETWEEN 0 AND 1e15 AND d.price_raw <> round(d.price_raw) THEN 'sub_unit_price' END),
    (CASE WHEN d.kind = 'direct' AND d.sample_contributor IS NULL THEN 'sample_without_contributor' END)
) AS f(kind)
WHERE f.kind IS NOT NULL;

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
ANALYZE held;
