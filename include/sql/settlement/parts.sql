-- Exact allocation in minor units (of each licence's currency). The contributor pool is share_bps of the price, rounded
-- half up; it is divided among the contributors by largest remainder (ties: lowest
-- contributor id first), so the parts always sum to the pool and pool + platform = price.
-- csl.settlement.allocate is the same rule in Python (property-tested). A direct licence has
-- one contributor, who gets the whole pool: only generation licences need the division.
CREATE TEMP TABLE pool ON COMMIT DROP AS
SELECT d.license_id, d.currency, d.exponent, d.kind, d.sample_contributor, d.payment_intent_id,
       round(d.price_raw)::bigint                                       AS price_minor,
       (round(d.price_raw)::bigint * %(share_bps)s + 5000) / 10000        AS pool_minor
FROM due d
WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.license_id = d.license_id);
ANALYZE pool;

CREATE TEMP TABLE parts ON COMMIT DROP AS
SELECT license_id, sample_contributor AS contributor_id, pool_minor AS amount_minor
FROM pool WHERE kind = 'direct'
UNION ALL
SELECT license_id, contributor_id, (base + CASE WHEN rnk <= leftover THEN 1 ELSE 0 END)::bigint
FROM (
    SELECT *, row_number() OVER (PARTITION BY license_id ORDER BY remainder DESC, contributor_id) AS rnk,
           pool_minor - (sum(base) OVER (PARTITION BY license_id))::bigint AS leftover
    FROM (
        SELECT w.license_id, w.contributor_id, p.pool_minor,
               (p.pool_minor * w.weight) / (sum(w.weight) OVER (PARTITION BY w.license_id))::bigint   AS base,
               (p.pool_minor * w.weight) %% (sum(w.weight) OVER (PARTITION BY w.license_id))::bigint AS remainder
        FROM weights w JOIN pool p USING (license_id)
    ) shares
) ranked;
ANALYZE parts;
