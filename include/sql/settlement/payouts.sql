-- Payout instructions of a run (before the gate, so the gate judges them too): every
-- contributor payable balance at or over the minimum is paid out in full (one journal entry
-- per currency: each payable debited, payouts in transit credited) to the contributor's
-- verified connected account, copied onto the payout now and never looked up again; the rest
-- is carried. A balance is held (carried, with a finding that does not fail the gate) when the
-- contributor has no account in csl_ops.payout_accounts, or one not verified or disabled, or when
-- the audit found duplicate platform splits of theirs (split_duplicates). Each payout records the
-- licences it covers as ranges of its account's postings.
-- The run has just written most of the postings and accounts, so their statistics are stale:
-- balances are aggregated per account before any join, and the small temp tables are analyzed,
-- so that no plan rests on "this table is empty".
CREATE TEMP TABLE payable ON COMMIT DROP AS
SELECT a.id AS account_id, a.contributor_id, a.currency, b.balance, pa.account_id AS destination,
       CASE WHEN a.contributor_id IN (SELECT contributor_id FROM split_duplicates) THEN 'duplicate_splits'
            WHEN pa.account_id IS NULL THEN 'no_payout_account'
            WHEN pa.disabled_at IS NOT NULL THEN 'payout_account_disabled'
            WHEN pa.verified_at IS NULL THEN 'payout_account_unverified' END AS hold
FROM (SELECT account_id, -sum(amount_minor)::bigint AS balance FROM csl_ops.postings GROUP BY account_id) b
JOIN csl_ops.ledger_accounts a ON a.id = b.account_id AND a.kind = 'contributor_payable'
LEFT JOIN csl_ops.payout_accounts pa ON pa.contributor_id = a.contributor_id
WHERE b.balance >= greatest(%(minimum)s, 1);

CREATE TEMP TABLE payout_holds ON COMMIT DROP AS SELECT * FROM payable WHERE hold IS NOT NULL;
DELETE FROM payable WHERE hold IS NOT NULL;
ANALYZE payable;

INSERT INTO csl_ops.ledger_accounts (kind, contributor_id, currency)
SELECT DISTINCT 'payouts_in_transit', NULL::uuid, currency FROM payable
ON CONFLICT DO NOTHING;

CREATE TEMP TABLE payout_entries ON COMMIT DROP AS
WITH inserted AS (
    INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo)
    SELECT %(run_id)s, 'payout', currency, 'payout instructions of run ' || %(run_key)s
    FROM (SELECT DISTINCT currency FROM payable) c
    RETURNING id, currency
) SELECT * FROM inserted;

-- the key is sha256("<installation>:<run_key>:<contributor>:<currency>"): a rerun of the same
-- run_key makes the same keys; another installation (staging, a restored copy) never does
CREATE TEMP TABLE new_payouts ON COMMIT DROP AS
WITH inserted AS (
    INSERT INTO csl_ops.payouts (run_id, contributor_id, currency, amount_minor, idempotency_key, status, destination)
    SELECT %(run_id)s, contributor_id, currency, balance,
           'csl-payout-' || left(encode(sha256(convert_to(%(installation)s::text || ':' || %(run_key)s::text || ':'
                                                          || contributor_id || ':' || currency, 'UTF8')), 'hex'), 32),
           'instructed', destination
    FROM payable
    ORDER BY currency, contributor_id
    RETURNING id, contributor_id, currency, amount_minor, idempotency_key
) SELECT i.*, pa.account_id FROM inserted i JOIN payable pa USING (contributor_id, currency);
ANALYZE new_payouts;

-- What each new payout covers (see 0010_payout_ranges.sql): its account's lines after the
-- account's last range, up to the highest posting id now (every sale line of this run is
-- below it), and every released range of the account that no live payout covers.
INSERT INTO csl_ops.payout_ranges (payout_id, account_id, from_id, through_id)
SELECT np.id, np.account_id, coalesce(m.through, 0), hw.id
FROM new_payouts np
CROSS JOIN (SELECT coalesce(max(id), 0) AS id FROM csl_ops.postings) hw
LEFT JOIN (SELECT r.account_id, max(r.through_id) AS through FROM csl_ops.payout_ranges r
           WHERE r.account_id IN (SELECT account_id FROM new_payouts) GROUP BY 1) m USING (account_id)
WHERE coalesce(m.through, 0) < hw.id
UNION ALL
SELECT DISTINCT np.id, r.account_id, r.from_id, r.through_id
FROM new_payouts np
JOIN csl_ops.payout_ranges r ON r.account_id = np.account_id AND r.released
WHERE NOT EXISTS (SELECT 1 FROM csl_ops.payout_ranges x
                  WHERE x.account_id = r.account_id AND x.from_id = r.from_id AND NOT x.released);

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, source_id, kind)
SELECT e.id, np.account_id, np.amount_minor, np.idempotency_key, 'payout'
FROM new_payouts np
JOIN payout_entries e USING (currency);

INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, kind)
SELECT e.id, a.id, -t.total, 'payout'
FROM payout_entries e
JOIN (SELECT currency, sum(amount_minor)::bigint AS total FROM new_payouts GROUP BY 1) t USING (currency)
JOIN csl_ops.ledger_accounts a ON a.kind = 'payouts_in_transit' AND a.contributor_id IS NULL AND a.currency = e.currency;
