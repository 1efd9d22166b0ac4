-- Which licences a payout covers, as ranges of its account's posting ids instead of a row per
-- licence (a million rows and two uuid-led indexes per big run, 7 s of it).
--
-- A payout covers the sale lines of its contributor's payable account with from_id < id <=
-- through_id (a licence paid by the platform before settlement has a prepaid line in the same
-- range and is not covered: its split is paid already). A new payout's own range starts where
-- the account's last range ended and ends at the highest posting id when it is instructed, so
-- ranges never overlap. A refused payout releases its ranges; the next payout of the account
-- adopts every released range that no live payout covers. At most one live range starts at a
-- given id of an account (payout_ranges_live_idx): a line can never be covered twice.
CREATE TABLE csl_ops.payout_ranges (
    payout_id   bigint  NOT NULL REFERENCES csl_ops.payouts (id),
    account_id  bigint  NOT NULL,
    from_id     bigint  NOT NULL,             -- exclusive
    through_id  bigint  NOT NULL,             -- inclusive
    released    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (payout_id, from_id),
    CHECK (from_id < through_id)
);
CREATE UNIQUE INDEX payout_ranges_live_idx ON csl_ops.payout_ranges (account_id, from_id) WHERE NOT released;
CREATE INDEX payout_ranges_account_idx ON csl_ops.payout_ranges (account_id, through_id);

-- coverage recorded before this migration: one range per covered sale line
INSERT INTO csl_ops.payout_ranges (payout_id, account_id, from_id, through_id, released)
SELECT pl.payout_id, p.account_id, p.id - 1, p.id, pl.released
FROM csl_ops.payout_licences pl
JOIN csl_ops.payouts po ON po.id = pl.payout_id
JOIN csl_ops.ledger_accounts a ON a.kind = 'contributor_payable' AND a.contributor_id = pl.contributor_id
                              AND a.currency = po.currency
JOIN csl_ops.postings p ON p.license_id = pl.license_id AND p.kind = 'sale' AND p.account_id = a.id
                       AND p.source_id IS NULL;
DO $$ BEGIN
    IF (SELECT count(*) FROM csl_ops.payout_licences) <> (SELECT count(*) FROM csl_ops.payout_ranges) THEN
        RAISE EXCEPTION 'payout_licences rows without their sale posting: coverage would be lost; not migrating';
    END IF;
END $$;
DROP TABLE csl_ops.payout_licences;

-- the same rows as before, for readers (statements, tests, data teams): each covered licence
CREATE VIEW csl_ops.payout_licences AS
SELECT r.payout_id, p.license_id, a.contributor_id, -p.amount_minor AS amount_minor, r.released
FROM csl_ops.payout_ranges r
JOIN csl_ops.ledger_accounts a ON a.id = r.account_id
JOIN csl_ops.postings p ON p.account_id = r.account_id AND p.id > r.from_id AND p.id <= r.through_id
                       AND p.kind = 'sale' AND p.license_id IS NOT NULL AND p.source_id IS NULL
WHERE NOT EXISTS (SELECT 1 FROM csl_ops.postings pp
                  WHERE pp.license_id = p.license_id AND pp.kind = 'prepaid' AND pp.account_id = p.account_id
                    AND pp.source_id IS NULL);

-- an account's postings in id order: the lines a range covers
DROP INDEX csl_ops.postings_account_idx;
CREATE INDEX postings_account_idx ON csl_ops.postings (account_id, id);
