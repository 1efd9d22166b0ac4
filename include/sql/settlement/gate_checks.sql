-- The data-quality gate's evidence for one run: each check counts its violations (0 = pass).
-- csl.settlement.GATE_CHECKS lists the names (with gate_clawbacks.sql's two); the gate refuses a
-- result without all of them. %(postings_before)s is the highest posting id when the run began:
-- the run's postings are the ones above it (found by primary key, whatever the ledger's size).
WITH run_entries AS MATERIALIZED (
    SELECT id, kind, currency FROM csl_ops.journal_entries WHERE run_id = %(run_id)s
), run_sale_lines AS MATERIALIZED (  -- the run's licence × contributor sale credits
    SELECT p.license_id, p.account_id, -p.amount_minor AS cents
    FROM csl_ops.postings p
    WHERE p.id > %(postings_before)s AND p.entry_id IN (SELECT id FROM run_entries WHERE kind = 'sale')
      AND p.kind = 'sale' AND p.license_id IS NOT NULL AND p.source_id IS NULL
), run_licences AS MATERIALIZED (
    SELECT license_id, currency, price_minor, contributor_minor, platform_minor
    FROM csl_ops.settled_licences WHERE run_id = %(run_id)s
)
-- the ledger: every posting written since the run began names an entry and an account that
-- exist (they are append-only, so this holds for good), of the entry's currency and kind
SELECT 'postings_reference_entries_and_accounts' AS check_name, count(*) AS violations
FROM csl_ops.postings p
LEFT JOIN csl_ops.journal_entries e ON e.id = p.entry_id
LEFT JOIN csl_ops.ledger_accounts a ON a.id = p.account_id
WHERE p.id > %(postings_before)s
  AND (e.id IS NULL OR a.id IS NULL OR e.currency <> a.currency
       OR e.kind <> CASE p.kind WHEN 'prepaid' THEN 'payout' WHEN 'payout_reversal' THEN 'payout' ELSE p.kind END)
UNION ALL
SELECT 'entries_balance', count(*) FILTER (WHERE total <> 0)
FROM (SELECT p.entry_id, sum(p.amount_minor) AS total FROM csl_ops.postings p
      WHERE p.id > %(postings_before)s AND p.entry_id IN (SELECT id FROM run_entries) GROUP BY 1) b
UNION ALL
-- each licence the run settled: its contributor lines sum to its contributors' total, and
-- contributors + platform = price; no contributor line without a settled licence
SELECT 'allocations_sum_to_price',
       count(*) FILTER (WHERE sl.license_id IS NULL OR sl.contributor_minor <> coalesce(c.total, 0)
                           OR sl.contributor_minor + sl.platform_minor <> sl.price_minor)
FROM run_licences sl
FULL JOIN (SELECT license_id, sum(cents) AS total FROM run_sale_lines GROUP BY 1) c USING (license_id)
UNION ALL
-- every licence due when the run began (its snapshot: the run is one REPEATABLE READ transaction,
-- so the licences table reads the same here) is now settled, or held with a finding
SELECT 'no_due_licence_left', count(*)
FROM due d
WHERE NOT EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = d.license_id)
  AND NOT EXISTS (SELECT 1 FROM held h WHERE h.license_id = d.license_id)
UNION ALL
-- the platform's revenue_splits of the run's licences against the posted lines, both ways, row
-- by row (no aggregation: a licence × contributor has one posted line at most): each row at its
-- line's cents, each line with a row (a contributor with a zero part may have a zero row or none).
-- A duplicate row meets a line twice, so the lines met count more rows than there are lines;
-- duplicate zero rows (no line) are counted among the few rows without one.
SELECT x.check_name, x.violations
FROM (
    SELECT count(*) FILTER (WHERE coalesce(r.cents, 0) <> coalesce(po.cents, 0)) AS round_trip,
           count(*) FILTER (WHERE po.license_id IS NOT NULL) - (SELECT count(*) FROM run_sale_lines)
         + count(*) FILTER (WHERE po.license_id IS NULL)
         - count(DISTINCT (r.license_id, r.contributor_id)) FILTER (WHERE po.license_id IS NULL) AS duplicates
    FROM (SELECT rs.license_id, rs.contributor_id, csl_ops.minor_units(rs.amount, c.exponent) AS cents
          FROM revenue_splits rs JOIN csl_ops.settled_licences s ON s.license_id = rs.license_id AND s.run_id = %(run_id)s
          JOIN csl_ops.currencies c ON c.code = s.currency) r
    FULL JOIN (SELECT l.license_id, a.contributor_id, l.cents
               FROM run_sale_lines l JOIN csl_ops.ledger_accounts a ON a.id = l.account_id) po
           USING (license_id, contributor_id)
) t
CROSS JOIN LATERAL (VALUES ('platform_rows_round_trip', t.round_trip), ('no_duplicate_splits', t.duplicates))
    AS x(check_name, violations)
UNION ALL
-- findings that hold a licence (those that only hold a payout carry its balance, and pass)
SELECT 'findings', count(*) FROM csl_ops.settlement_findings WHERE run_id = %(run_id)s AND blocking
UNION ALL
-- each payout of the run is posted at its amount on its contributor's payable, which it leaves at zero
SELECT 'payouts_clear_balances', count(*)
FROM csl_ops.payouts po
LEFT JOIN csl_ops.postings pp ON pp.source_id = po.idempotency_key AND pp.kind = 'payout'
LEFT JOIN csl_ops.ledger_accounts a ON a.id = pp.account_id
LEFT JOIN LATERAL (SELECT sum(x.amount_minor) AS balance FROM csl_ops.postings x WHERE x.account_id = pp.account_id) b
       ON true
WHERE po.run_id = %(run_id)s
  AND (pp.amount_minor IS DISTINCT FROM po.amount_minor OR a.kind IS DISTINCT FROM 'contributor_payable'
       OR a.contributor_id IS DISTINCT FROM po.contributor_id OR a.currency IS DISTINCT FROM po.currency
       OR po.amount_minor < greatest(%(minimum)s, 1) OR b.balance IS DISTINCT FROM 0)
UNION ALL
-- each payout of the run pays its contributor's verified, enabled connected account (never a
-- customer id, never an invented one)
SELECT 'payouts_pay_verified_accounts', count(*)
FROM csl_ops.payouts po
LEFT JOIN csl_ops.payout_accounts pa ON pa.contributor_id = po.contributor_id AND pa.account_id = po.destination
                                    AND pa.verified_at IS NOT NULL AND pa.disabled_at IS NULL
WHERE po.run_id = %(run_id)s AND pa.contributor_id IS NULL
UNION ALL
-- what the run's payouts cover: ranges on their own contributor's payable, and no line of an
-- account in two live ranges (each live range of the account starts at or after the end of
-- the one before it)
SELECT 'payout_ranges_are_disjoint', count(*)
FROM (
    SELECT r.account_id, r.payout_id, r.from_id,
           lag(r.through_id) OVER (PARTITION BY r.account_id ORDER BY r.from_id) AS previous_through
    FROM csl_ops.payout_ranges r
    WHERE NOT r.released
      AND r.account_id IN (SELECT r2.account_id FROM csl_ops.payout_ranges r2
                           JOIN csl_ops.payouts po ON po.id = r2.payout_id WHERE po.run_id = %(run_id)s)
) r
JOIN csl_ops.payouts po ON po.id = r.payout_id
LEFT JOIN csl_ops.ledger_accounts a ON a.id = r.account_id
WHERE r.from_id < r.previous_through
   OR (po.run_id = %(run_id)s AND (a.kind IS DISTINCT FROM 'contributor_payable'
                                   OR a.contributor_id IS DISTINCT FROM po.contributor_id
                                   OR a.currency IS DISTINCT FROM po.currency))
UNION ALL
-- each refund or lost dispute clawed back by the run: the clearing debit is its amount, in the
-- minor units of the licence's currency
SELECT 'clawbacks_match_refunds', count(*)
FROM csl_ops.postings p
JOIN run_entries e ON e.id = p.entry_id AND e.kind = 'clawback' AND p.id > %(postings_before)s
JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'clearing'
LEFT JOIN csl_ops.currencies c ON c.code = a.currency
LEFT JOIN (SELECT id, amount FROM refunds WHERE status = 'succeeded'
           UNION ALL SELECT id, amount FROM disputes WHERE status = 'lost') r ON r.id = p.source_id
WHERE r.id IS NULL OR -p.amount_minor IS DISTINCT FROM csl_ops.minor_units(r.amount, c.exponent)
