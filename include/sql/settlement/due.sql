-- Licences due for settlement: payment completed, not yet in the ledger, created in the
-- period. price_raw is the price in cents by csl_ops.minor_units (the one conversion of
-- platform floats): a value with a real sub-cent part is a finding, never rounded.
-- The anti-join against the ledger comes first: on a night with little to settle it is all
-- the work there is.
CREATE TEMP TABLE due ON COMMIT DROP AS
WITH todo AS MATERIALIZED (
    SELECT l.id, l.payment_intent_id, l.price, l.audio_sample_id, l.generation_id
    FROM licenses l
    WHERE l.payment_status = 'completed'
      AND (%(period_start)s::timestamptz IS NULL OR l.created_at >= %(period_start)s::timestamptz)
      AND (%(period_end)s::timestamptz IS NULL OR l.created_at < %(period_end)s::timestamptz)
      AND NOT EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = l.id)
)
SELECT l.id                                          AS license_id,
       l.payment_intent_id,
       lower(pi.currency)                            AS currency,
       l.price,
       csl_ops.minor_units(l.price)                  AS price_raw,
       CASE WHEN l.audio_sample_id IS NOT NULL THEN 'direct' ELSE 'generation' END AS kind,
       s.contributor_id                              AS sample_contributor,
       g.source_samples
FROM todo l
LEFT JOIN payment_intents pi ON pi.id = l.payment_intent_id
LEFT JOIN audio_samples s ON s.id = l.audio_sample_id
LEFT JOIN generations g ON g.id = l.generation_id;
ANALYZE due;
