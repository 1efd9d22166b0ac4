-- The data-quality gate's evidence for one run: each check counts its violations (0 = pass).
-- csl.settlement.GATE_CHECKS lists the names (with gate_clawbacks.sql's two); the gate refuses a
-- result without all of them.
SELECT 'entries_balance' AS check_name,
       count(*) FILTER (WHERE total <> 0) AS violations
FROM (SELECT e.id, sum(p.amount_minor) AS total FROM csl_ops.journal_entries e
      JOIN csl_ops.postings p ON p.entry_id = e.id WHERE e.run_id = %(run_id)s GROUP BY e.id) b
UNION ALL
SELECT 'allocations_sum_to_price',
       count(*) FILTER (WHERE sl.contributor_minor <> coalesce(c.total, 0)
                           OR sl.contributor_minor + sl.platform_minor <> sl.price_minor)
FROM csl_ops.settled_licences sl
LEFT JOIN (SELECT p.license_id, -sum(p.amount_minor) AS total
           FROM csl_ops.postings p JOIN csl_ops.journal_entries e ON e.id = p.entry_id
           WHERE e.run_id = %(run_id)s AND e.kind = 'sale' AND p.license_id IS NOT NULL
           GROUP BY 1) c USING (license_id)
WHERE sl.run_id = %(run_id)s
UNION ALL
SELECT 'no_due_licence_left', count(*)
FROM licenses l
WHERE l.payment_status = 'completed'
  AND (%(period_start)s::timestamptz IS NULL OR l.created_at >= %(period_start)s::timestamptz)
  AND (%(period_end)s::timestamptz IS NULL OR l.created_at < %(period_end)s::timestamptz)
  AND NOT EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = l.id)
UNION ALL
SELECT 'platform_rows_round_trip', count(*)
FROM csl_ops.settled_licences sl
JOIN revenue_splits rs ON rs.license_id = sl.license_id
LEFT JOIN (SELECT p.license_id, a.contributor_id, -p.amount_minor AS cents
           FROM csl_ops.postings p
           JOIN csl_ops.journal_entries e ON e.id = p.entry_id AND e.kind = 'sale' AND e.run_id = %(run_id)s
           JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'contributor_payable') posted
       ON posted.license_id = rs.license_id AND posted.contributor_id = rs.contributor_id
WHERE sl.run_id = %(run_id)s
  AND (posted.cents IS NULL OR csl_ops.minor_units(rs.amount) <> posted.cents)
UNION ALL
SELECT 'no_duplicate_splits', count(*)
FROM (SELECT rs.license_id, rs.contributor_id FROM revenue_splits rs
      JOIN csl_ops.settled_licences sl ON sl.license_id = rs.license_id AND sl.run_id = %(run_id)s
      GROUP BY 1, 2 HAVING count(*) > 1) d
UNION ALL
SELECT 'findings', count(*) FROM csl_ops.settlement_findings WHERE run_id = %(run_id)s
UNION ALL
-- each payout of the run is posted at its amount on its contributor's payable, which it leaves at zero
SELECT 'payouts_clear_balances', count(*)
FROM csl_ops.payouts po
LEFT JOIN csl_ops.postings pp ON pp.posting_key = 'payout:' || po.idempotency_key
LEFT JOIN csl_ops.ledger_accounts a ON a.id = pp.account_id
WHERE po.run_id = %(run_id)s
  AND (pp.amount_minor IS DISTINCT FROM po.amount_minor OR a.kind IS DISTINCT FROM 'contributor_payable'
       OR a.contributor_id IS DISTINCT FROM po.contributor_id OR a.currency IS DISTINCT FROM po.currency
       OR po.amount_minor < greatest(%(minimum)s, 1)
       OR (SELECT sum(x.amount_minor) FROM csl_ops.postings x WHERE x.account_id = pp.account_id) <> 0)
UNION ALL
-- each licence a payout covers is a sale part of that contributor, in the payout's currency, at that amount
SELECT 'payout_licences_are_sales', count(*)
FROM (
    SELECT pl.license_id, pl.contributor_id, po.currency, pl.amount_minor
    FROM csl_ops.payouts po JOIN csl_ops.payout_licences pl ON pl.payout_id = po.id
    WHERE po.run_id = %(run_id)s
    EXCEPT ALL
    SELECT p.license_id, a.contributor_id, a.currency, -p.amount_minor
    FROM csl_ops.payouts po
    JOIN csl_ops.ledger_accounts a ON a.kind = 'contributor_payable' AND a.contributor_id = po.contributor_id
                                  AND a.currency = po.currency
    JOIN csl_ops.postings p ON p.account_id = a.id AND p.license_id IS NOT NULL
    JOIN csl_ops.journal_entries e ON e.id = p.entry_id AND e.kind = 'sale'
    WHERE po.run_id = %(run_id)s
) not_a_sale
UNION ALL
-- each refund clawed back by the run: the clearing debit is the refund's amount, in minor units
SELECT 'clawbacks_match_refunds', count(*)
FROM csl_ops.postings p
JOIN csl_ops.journal_entries e ON e.id = p.entry_id AND e.kind = 'clawback' AND e.run_id = %(run_id)s
JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'clearing'
LEFT JOIN refunds r ON r.id = p.source_id
WHERE r.id IS NULL OR -p.amount_minor <> csl_ops.minor_units(r.amount)
