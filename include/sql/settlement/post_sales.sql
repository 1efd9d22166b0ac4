-- Post the run's sales: one journal entry per currency; a credit per licence × contributor
-- (posting key sale:<licence>:<contributor>), the platform's credit and the clearing debit
-- per entry; the settled-licence markers; new revenue_splits rows (pending, exact cents).
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

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, posting_key)
SELECT e.id, a.id, -pa.amount_minor, pa.license_id, 'sale:' || pa.license_id || ':' || pa.contributor_id
FROM parts pa
JOIN pool po USING (license_id)
JOIN sale_entries e ON e.currency = po.currency
JOIN csl_ops.ledger_accounts a ON a.kind = 'contributor_payable' AND a.contributor_id = pa.contributor_id
                              AND a.currency = po.currency
WHERE pa.amount_minor <> 0;

-- Splits the platform already paid out (revenue_splits.status = 'paid'): the payment that
-- already left is posted too, so the contributor's payable never counts it again and no payout
-- pays it twice (one 'payout' entry per currency: each payable debited, payouts in transit credited).
CREATE TEMP TABLE prepaid ON COMMIT DROP AS
SELECT pa.license_id, pa.contributor_id, po.currency, pa.amount_minor
FROM parts pa
JOIN pool po USING (license_id)
JOIN existing e ON e.license_id = pa.license_id AND e.contributor_id = pa.contributor_id
WHERE e.paid AND pa.amount_minor <> 0;

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

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, posting_key)
SELECT e.id, a.id, pp.amount_minor, pp.license_id, 'prepaid:' || pp.license_id || ':' || pp.contributor_id
FROM prepaid pp
JOIN prepaid_entries e USING (currency)
JOIN csl_ops.ledger_accounts a ON a.kind = 'contributor_payable' AND a.contributor_id = pp.contributor_id
                              AND a.currency = pp.currency;

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, posting_key)
SELECT e.id, a.id, -t.total, 'prepaid-entry:' || e.id || ':in_transit'
FROM prepaid_entries e
JOIN (SELECT currency, sum(amount_minor)::bigint AS total FROM prepaid GROUP BY 1) t USING (currency)
JOIN csl_ops.ledger_accounts a ON a.kind = 'payouts_in_transit' AND a.contributor_id IS NULL AND a.currency = e.currency;

CREATE TEMP TABLE sale_totals ON COMMIT DROP AS
SELECT po.currency, sum(po.price_minor)::bigint AS gross, coalesce(sum(c.total), 0)::bigint AS contributors
FROM pool po
LEFT JOIN (SELECT license_id, sum(amount_minor) AS total FROM parts GROUP BY 1) c USING (license_id)
GROUP BY po.currency;

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, posting_key)
SELECT e.id, a.id, t.amount, 'sale-entry:' || e.id || ':' || a.kind
FROM sale_entries e
JOIN sale_totals st ON st.currency = e.currency
CROSS JOIN LATERAL (VALUES ('clearing', st.gross), ('platform_revenue', -(st.gross - st.contributors))) t(kind, amount)
JOIN csl_ops.ledger_accounts a ON a.kind = t.kind AND a.contributor_id IS NULL AND a.currency = e.currency
WHERE t.amount <> 0;

INSERT INTO csl_ops.settled_licences
    (license_id, run_id, currency, price_minor, contributor_minor, platform_minor, share_bps, splits_reused)
SELECT po.license_id, %(run_id)s, po.currency, po.price_minor, coalesce(c.total, 0),
       po.price_minor - coalesce(c.total, 0), %(share_bps)s,
       EXISTS (SELECT 1 FROM existing e WHERE e.license_id = po.license_id)
FROM pool po
LEFT JOIN (SELECT license_id, sum(amount_minor) AS total FROM parts GROUP BY 1) c USING (license_id);

INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage, status)
SELECT pa.license_id, pa.contributor_id, pa.amount_minor / 100.0,
       round(pa.amount_minor * 100.0 / nullif(po.price_minor, 0), 4), 'pending'
FROM parts pa
JOIN pool po USING (license_id)
WHERE pa.amount_minor <> 0
  AND NOT EXISTS (SELECT 1 FROM existing e WHERE e.license_id = pa.license_id);
