-- Post the run's sales: one journal entry per currency; a credit per licence × contributor
-- (licence line: licence × 'sale' × the contributor's payable), the platform's credit and the
-- clearing debit per entry (entry lines); the settled-licence markers; new revenue_splits rows
-- (pending, exact to the minor unit). Bulk rows are written in licence order: every index they enter that
-- leads with the licence is then filled page by page instead of at random.
INSERT INTO csl_ops.ledger_accounts (kind, contributor_id, currency)
SELECT DISTINCT 'contributor_payable', pa.contributor_id, po.currency FROM parts pa JOIN pool po USING (license_id)
UNION
SELECT DISTINCT k.kind, NULL::uuid, po.currency FROM pool po CROSS JOIN (VALUES ('platform_revenue'), ('clearing')) k(kind)
ON CONFLICT DO NOTHING;

CREATE TEMP TABLE sale_entries ON COMMIT DROP AS
WITH inserted AS (
    INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo)
    SELECT %(run_id)s, 'sale', currency, 'licence sales settled by run ' || %(run_key)s
    FROM (SELECT DISTINCT currency FROM pool) c
    RETURNING id, currency
) SELECT * FROM inserted;

-- the run's contributor lines, each with its account and its licence's price: posted, written to
-- revenue_splits (unless the licence's rows are reused), and the source of the prepaid lines
CREATE TEMP TABLE sale_lines ON COMMIT DROP AS
SELECT pa.license_id, pa.contributor_id, po.currency, po.exponent, a.id AS account_id, pa.amount_minor, po.price_minor,
       pa.license_id IN (SELECT license_id FROM existing) AS splits_reused
FROM parts pa
JOIN pool po USING (license_id)
JOIN csl_ops.ledger_accounts a ON a.kind = 'contributor_payable' AND a.contributor_id = pa.contributor_id
                              AND a.currency = po.currency
WHERE pa.amount_minor <> 0;

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, kind)
SELECT e.id, sl.account_id, -sl.amount_minor, sl.license_id, 'sale'
FROM sale_lines sl
JOIN sale_entries e USING (currency)
ORDER BY sl.license_id;

-- Splits the platform already paid out (revenue_splits.status = 'paid'): the payment that
-- already left is posted too, so the contributor's payable never counts it again and no payout
-- pays it twice (one 'payout' entry per currency: each payable debited, payouts in transit credited).
CREATE TEMP TABLE prepaid ON COMMIT DROP AS
SELECT sl.license_id, sl.contributor_id, sl.currency, sl.account_id, sl.amount_minor
FROM sale_lines sl
JOIN existing e ON e.license_id = sl.license_id AND e.contributor_id = sl.contributor_id
WHERE e.paid;

INSERT INTO csl_ops.ledger_accounts (kind, contributor_id, currency)
SELECT DISTINCT 'payouts_in_transit', NULL::uuid, currency FROM prepaid
ON CONFLICT DO NOTHING;

CREATE TEMP TABLE prepaid_entries ON COMMIT DROP AS
WITH inserted AS (
    INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo)
    SELECT %(run_id)s, 'payout', currency, 'paid by the platform before settlement; recorded by run ' || %(run_key)s
    FROM (SELECT DISTINCT currency FROM prepaid) c
    RETURNING id, currency
) SELECT * FROM inserted;

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, kind)
SELECT e.id, pp.account_id, pp.amount_minor, pp.license_id, 'prepaid'
FROM prepaid pp
JOIN prepaid_entries e USING (currency)
ORDER BY pp.license_id;

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, kind)
SELECT e.id, a.id, -t.total, 'prepaid'
FROM prepaid_entries e
JOIN (SELECT currency, sum(amount_minor)::bigint AS total FROM prepaid GROUP BY 1) t USING (currency)
JOIN csl_ops.ledger_accounts a ON a.kind = 'payouts_in_transit' AND a.contributor_id IS NULL AND a.currency = e.currency;

-- per currency: the entry lines. The contributors' total of a licence is its pool (the parts
-- always sum to it; the gate checks the posted lines against it)
INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, kind)
SELECT e.id, a.id, t.amount, 'sale'
FROM sale_entries e
JOIN (SELECT currency, sum(price_minor)::bigint AS gross, sum(pool_minor)::bigint AS contributors
      FROM pool GROUP BY 1) st ON st.currency = e.currency
CROSS JOIN LATERAL (VALUES ('clearing', st.gross), ('platform_revenue', -(st.gross - st.contributors))) t(kind, amount)
JOIN csl_ops.ledger_accounts a ON a.kind = t.kind AND a.contributor_id IS NULL AND a.currency = e.currency
WHERE t.amount <> 0;

INSERT INTO csl_ops.settled_licences
    (license_id, run_id, currency, price_minor, contributor_minor, platform_minor, share_bps, splits_reused,
     payment_intent_id)
SELECT license_id, %(run_id)s, currency, price_minor, pool_minor, price_minor - pool_minor, %(share_bps)s,
       license_id IN (SELECT license_id FROM existing), payment_intent_id
FROM pool
ORDER BY license_id;

-- the platform's float column in major units: exact to the minor unit (csl_ops.major_units)
INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage, status)
SELECT license_id, contributor_id, csl_ops.major_units(amount_minor, exponent),
       round(amount_minor * 100.0 / nullif(price_minor, 0), 4), 'pending'
FROM sale_lines
WHERE NOT splits_reused
ORDER BY license_id;
