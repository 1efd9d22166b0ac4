-- The gate's clawback checks, run only when the run clawed something back (else nothing to judge).
-- licences the run clawed back: all refunds so far never exceed the price, each licence's
-- clawbacks balance, each contributor's never exceed (or reverse) their part, and each equals
-- the refunded share of the part: the contributors' cumulative clawback is
-- half_up(contributors' total × refunded / price), divided by largest remainder over the parts
-- (integer arithmetic throughout: sums are cast back to bigint)
WITH touched AS (
    SELECT DISTINCT p.license_id FROM csl_ops.postings p
    JOIN csl_ops.journal_entries e ON e.id = p.entry_id AND e.kind = 'clawback' AND e.run_id = %(run_id)s
    WHERE p.id > %(postings_before)s
), sale AS (
    SELECT p.license_id, a.contributor_id, -p.amount_minor AS part
    FROM touched t JOIN csl_ops.postings p ON p.license_id = t.license_id AND p.kind = 'sale' AND p.source_id IS NULL
    JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'contributor_payable'
), claw AS (
    SELECT p.license_id, a.kind, a.contributor_id, sum(p.amount_minor)::bigint AS amount
    FROM touched t JOIN csl_ops.postings p ON p.license_id = t.license_id AND p.kind = 'clawback'
    JOIN csl_ops.ledger_accounts a ON a.id = p.account_id
    GROUP BY 1, 2, 3
), lic AS (  -- joined aggregates, not a subquery per licence (quadratic over the CTEs)
    SELECT t.license_id, sl.price_minor, coalesce(s.contributors, 0) AS contributors,
           coalesce(c.refunded, 0) AS refunded, coalesce(c.net, 0) AS net
    FROM touched t
    LEFT JOIN csl_ops.settled_licences sl USING (license_id)
    LEFT JOIN (SELECT license_id, sum(part)::bigint AS contributors FROM sale GROUP BY 1) s USING (license_id)
    LEFT JOIN (SELECT license_id, coalesce(-sum(amount) FILTER (WHERE kind = 'clearing'), 0)::bigint AS refunded,
                      sum(amount)::bigint AS net
               FROM claw GROUP BY 1) c USING (license_id)
), shares AS (
    SELECT s.license_id, s.contributor_id, s.part, c.clawed,
           (c.clawed * s.part) / l.contributors AS base, (c.clawed * s.part) %% l.contributors AS remainder
    FROM sale s JOIN lic l USING (license_id)
    CROSS JOIN LATERAL (SELECT (2 * l.contributors * l.refunded + l.price_minor) / (2 * l.price_minor) AS clawed) c
    WHERE l.contributors > 0 AND l.price_minor > 0
), expected AS (
    SELECT license_id, contributor_id, part,
           base + CASE WHEN row_number() OVER (PARTITION BY license_id ORDER BY remainder DESC, contributor_id)
                            <= clawed - sum(base) OVER (PARTITION BY license_id) THEN 1 ELSE 0 END AS clawback
    FROM shares
), actual AS (
    SELECT license_id, contributor_id, amount AS clawback FROM claw WHERE kind = 'contributor_payable'
)
SELECT 'clawbacks_within_allocation' AS check_name,
       (SELECT count(*) FROM lic WHERE price_minor IS NULL OR refunded > price_minor OR refunded < 0 OR net <> 0)
     + (SELECT count(*) FROM actual a LEFT JOIN sale s USING (license_id, contributor_id)
        WHERE a.clawback < 0 OR a.clawback > coalesce(s.part, 0)) AS violations
UNION ALL
SELECT 'clawbacks_proportional', count(*)
FROM expected x FULL JOIN actual a USING (license_id, contributor_id)
WHERE coalesce(a.clawback, 0) <> coalesce(x.clawback, 0)
