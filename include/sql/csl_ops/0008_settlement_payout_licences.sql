-- Settlement, second increment: which licences each payout covers, a send state that a crash
-- can never lose, and one float → minor-units conversion for every platform amount.

-- The platform stores money as float dollars. Their decimal is read at 15 significant digits
-- (DBL_DIG, what PostgreSQL's float8 → numeric cast does): every decimal of up to 15 digits
-- survives float8 and back, so digits past the 15th are float noise (0.1 + 0.2 reads 0.30),
-- while a real sub-cent part stays (10.005 reads 1000.5 cents). The result may have a
-- fraction: callers hold such an amount as a finding, they never round it.
-- csl.settlement.to_minor is the same rule in Python (tested to agree).
CREATE FUNCTION csl_ops.minor_units(amount double precision) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT $1::numeric * 100 $$;

-- Sending: 'sent' is written (and committed) before each HTTP call, so a crash between the
-- call and its answer leaves a payout whose outcome is unknown, never one that looks unsent.
-- 'needs_review': the outcome stayed unknown past the idempotency window and a lookup found
-- no transfer; only a person may send it again.
ALTER TABLE csl_ops.payouts DROP CONSTRAINT payouts_status_check;
ALTER TABLE csl_ops.payouts ADD CONSTRAINT payouts_status_check
    CHECK (status IN ('instructed', 'sent', 'confirmed', 'failed', 'needs_review'));
ALTER TABLE csl_ops.payouts
    ADD COLUMN attempts      integer NOT NULL DEFAULT 0,
    ADD COLUMN first_sent_at timestamptz,   -- the idempotency key's first use (its window starts here)
    ADD COLUMN last_sent_at  timestamptz;
-- payouts answered before this migration: their last change is the best-known send time
UPDATE csl_ops.payouts SET attempts = 1, first_sent_at = updated_at, last_sent_at = updated_at
WHERE status <> 'instructed';
ALTER TABLE csl_ops.payouts
    ADD CONSTRAINT payouts_sent_has_time CHECK (status = 'instructed' OR first_sent_at IS NOT NULL);

-- The licences a payout covers: each contributor's sale part not yet covered by a live payout.
-- A refused payout releases its licences (the amount returns to the balance and the next
-- payout covers them again); at most one live payout covers a licence × contributor.
CREATE TABLE csl_ops.payout_licences (
    payout_id      bigint  NOT NULL REFERENCES csl_ops.payouts (id),
    license_id     uuid    NOT NULL,
    contributor_id uuid    NOT NULL,
    amount_minor   bigint  NOT NULL,             -- the contributor's sale part of the licence
    released       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (payout_id, license_id)
);
CREATE UNIQUE INDEX payout_licences_live_idx ON csl_ops.payout_licences (license_id, contributor_id) WHERE NOT released;

-- Payouts instructed before this migration: they cover what the old rule marked paid on their
-- confirmation (the contributor's sales in that currency settled by the payout's run or
-- before), each licence given to the earliest such payout that was not refused.
INSERT INTO csl_ops.payout_licences (payout_id, license_id, contributor_id, amount_minor)
SELECT DISTINCT ON (p.license_id, a.contributor_id) po.id, p.license_id, a.contributor_id, -p.amount_minor
FROM csl_ops.postings p
JOIN csl_ops.journal_entries e ON e.id = p.entry_id AND e.kind = 'sale'
JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'contributor_payable'
JOIN csl_ops.payouts po ON po.contributor_id = a.contributor_id AND po.currency = a.currency
                       AND po.run_id >= e.run_id AND po.status <> 'failed'
WHERE p.license_id IS NOT NULL
ORDER BY p.license_id, a.contributor_id, po.run_id, po.id;
