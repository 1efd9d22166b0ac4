-- Settlement, third increment: a ledger that stays cheap to write at a million licences.
--
-- 1. Composite idempotency keys instead of the text posting_key. Each posting carries its kind
--    and is one of three shapes, each with its own unique key:
--      licence line  (sale, prepaid)        licence × kind × account (the account is the
--                                            contributor's payable in the licence's currency)
--      source line   (clawback, payout,     source × kind × account (refund id, payout key)
--                     payout_reversal)
--      entry line    (an entry's total on   entry × account
--                     clearing, platform revenue, payouts in transit)
--    The 78-byte text key was the most expensive index to maintain (one random insert into a
--    wide B-tree per posting).
-- 2. Per-row foreign keys from the high-volume tables (postings → entries and accounts,
--    settled_licences → runs, payout_licences → payouts) are replaced by a guarantee that
--    costs nothing per row: the referenced tables are append-only (no UPDATE of ledger rows,
--    no DELETE or TRUNCATE at all, enforced by statement triggers), so a reference can only
--    be wrong at insert time, and the data-quality gate checks every posting a run writes
--    against the entries and accounts (postings_reference_entries_and_accounts). At a
--    million postings the two foreign-key checks alone took 8 s of a 10 s insert.

ALTER TABLE csl_ops.postings ADD COLUMN kind text;
UPDATE csl_ops.postings SET kind = CASE split_part(posting_key, ':', 1)
    WHEN 'sale' THEN 'sale' WHEN 'sale-entry' THEN 'sale'
    WHEN 'prepaid' THEN 'prepaid' WHEN 'prepaid-entry' THEN 'prepaid'
    WHEN 'clawback' THEN 'clawback'
    WHEN 'payout' THEN 'payout' WHEN 'payout-entry' THEN 'payout'
    WHEN 'payout-reversal' THEN 'payout_reversal' END;
ALTER TABLE csl_ops.postings
    ALTER COLUMN kind SET NOT NULL,
    ADD CONSTRAINT postings_kind_check
        CHECK (kind IN ('sale', 'prepaid', 'clawback', 'payout', 'payout_reversal')),
    ADD CONSTRAINT postings_shape_check CHECK (
        CASE kind WHEN 'sale' THEN source_id IS NULL
                  WHEN 'prepaid' THEN source_id IS NULL
                  WHEN 'clawback' THEN source_id IS NOT NULL AND license_id IS NOT NULL
                  ELSE license_id IS NULL END),
    DROP CONSTRAINT postings_entry_id_fkey,
    DROP CONSTRAINT postings_account_id_fkey,
    DROP COLUMN posting_key;
DROP INDEX csl_ops.postings_license_idx;
-- a run finds its own postings by id (above the highest id when it began), not by entry
DROP INDEX csl_ops.postings_entry_idx;

CREATE UNIQUE INDEX postings_licence_line_key ON csl_ops.postings (license_id, kind, account_id)
    WHERE license_id IS NOT NULL AND source_id IS NULL;
CREATE UNIQUE INDEX postings_source_line_key ON csl_ops.postings (source_id, kind, account_id)
    WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX postings_entry_line_key ON csl_ops.postings (entry_id, account_id)
    WHERE license_id IS NULL AND source_id IS NULL;
-- a licence's clawbacks (the refunded amount so far), read when another refund arrives
CREATE INDEX postings_clawback_licence_idx ON csl_ops.postings (license_id) WHERE kind = 'clawback';

ALTER TABLE csl_ops.settled_licences DROP CONSTRAINT settled_licences_run_id_fkey;
-- the payment a licence was settled from: a refund finds the settled licences it reverses by its
-- payment intent without going through every licence
ALTER TABLE csl_ops.settled_licences ADD COLUMN payment_intent_id text;
DO $$ BEGIN
    IF to_regclass('licenses') IS NOT NULL THEN  -- csl_ops may be migrated without the platform schema
        UPDATE csl_ops.settled_licences sl SET payment_intent_id = l.payment_intent_id
        FROM licenses l WHERE l.id = sl.license_id;
    END IF;
END $$;
ALTER TABLE csl_ops.payout_licences DROP CONSTRAINT payout_licences_payout_id_fkey;

CREATE FUNCTION csl_ops.refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'csl_ops.% is append-only: % refused (correct the ledger with a new entry)',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON csl_ops.postings
    FOR EACH STATEMENT EXECUTE FUNCTION csl_ops.refuse_ledger_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON csl_ops.journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION csl_ops.refuse_ledger_change();
CREATE TRIGGER ledger_accounts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON csl_ops.ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION csl_ops.refuse_ledger_change();
CREATE TRIGGER settled_licences_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON csl_ops.settled_licences
    FOR EACH STATEMENT EXECUTE FUNCTION csl_ops.refuse_ledger_change();
-- payouts change status, but are never removed: the licences they cover keep their payout
CREATE TRIGGER payouts_never_removed BEFORE DELETE OR TRUNCATE ON csl_ops.payouts
    FOR EACH STATEMENT EXECUTE FUNCTION csl_ops.refuse_ledger_change();
