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
