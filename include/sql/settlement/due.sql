-- Licences due for settlement: payment completed, not yet in the ledger, created in the period.
-- Whether the money really arrived is not taken from licenses.payment_status alone: held.sql
-- also requires the payment intent to have succeeded and its amount to cover every licence it
-- pays. Amounts are in minor units by the currency's ISO 4217 exponent (csl_ops.minor_units, the
-- one conversion of platform floats): a value with a part below the minor unit is a finding,
-- never rounded; a currency without an exponent (not in csl_ops.currencies) is one too.
-- The anti-join against the ledger comes first: on a night with little to settle it is all
-- the work there is.
-- The candidates are a table of their own, analyzed: the payment intents they name are then
-- known to be many (a CTE would be guessed at 200, and each of a million intents looked up by
-- index: 8 of the 14 s this took at a million licences).
CREATE TEMP TABLE todo ON COMMIT DROP AS
SELECT l.id, l.payment_intent_id, l.price, l.audio_sample_id, l.generation_id
FROM licenses l
WHERE l.payment_status = 'completed'
  AND (%(period_start)s::timestamptz IS NULL OR l.created_at >= %(period_start)s::timestamptz)
  AND (%(period_end)s::timestamptz IS NULL OR l.created_at < %(period_end)s::timestamptz)
  AND NOT EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = l.id);
ANALYZE todo;
CREATE TEMP TABLE due ON COMMIT DROP AS
WITH paid_for AS MATERIALIZED (  -- what each of those payment intents paid for: every licence on it that was paid
    -- in major units: exact (float8 to numeric), and scaled to minor units below (the conversion is linear)
    SELECT x.payment_intent_id, sum(x.price::numeric) AS licences_major
    FROM licenses x
    WHERE x.payment_status IN ('completed', 'refunded')
      AND x.payment_intent_id IN (SELECT payment_intent_id FROM todo)
    GROUP BY 1
)
SELECT l.id                                          AS license_id,
       l.payment_intent_id,
       lower(pi.currency)                            AS currency,
       c.exponent,
       l.price,
       csl_ops.minor_units(l.price, c.exponent)      AS price_raw,
       CASE WHEN l.audio_sample_id IS NOT NULL THEN 'direct' ELSE 'generation' END AS kind,
       s.contributor_id                              AS sample_contributor,
       g.source_samples,
       pi.id IS NOT NULL                             AS has_intent,
       pi.status                                     AS intent_status,
       pi.amount                                     AS intent_amount,
       csl_ops.minor_units(pi.amount, c.exponent)    AS intent_raw,
       pf.licences_major * csl_ops.minor_units(1, c.exponent) AS intent_licences_raw
FROM todo l
LEFT JOIN payment_intents pi ON pi.id = l.payment_intent_id
LEFT JOIN csl_ops.currencies c ON c.code = lower(pi.currency)
LEFT JOIN paid_for pf ON pf.payment_intent_id = l.payment_intent_id
LEFT JOIN audio_samples s ON s.id = l.audio_sample_id
LEFT JOIN generations g ON g.id = l.generation_id;
ANALYZE due;
