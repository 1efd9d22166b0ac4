-- Settlement, fourth increment (issue 12): what is paid, to whom, in which unit, and when a
-- payout may move on.

-- 1. Minor units follow each currency's ISO 4217 exponent (¥1,000 is 1,000 minor units, 12.345 KWD
--    is 12,345). The table lists the currencies a licence may be settled in; a currency not in it is
--    an unsupported_currency finding, never settled. csl.money.CURRENCY_EXPONENTS is the same table
--    in Python (tested to agree).
CREATE TABLE csl_ops.currencies (
    code     text     PRIMARY KEY CHECK (code ~ '^[a-z]{3}$'),
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
INSERT INTO csl_ops.currencies (code, exponent) VALUES
    ('aed', 2), ('afn', 2), ('all', 2), ('amd', 2), ('aoa', 2), ('ars', 2), ('aud', 2), ('awg', 2), ('azn', 2), ('bam', 2),
    ('bbd', 2), ('bdt', 2), ('bhd', 3), ('bif', 0), ('bmd', 2), ('bnd', 2), ('bob', 2), ('bov', 2), ('brl', 2), ('bsd', 2),
    ('btn', 2), ('bwp', 2), ('byn', 2), ('bzd', 2), ('cad', 2), ('cdf', 2), ('che', 2), ('chf', 2), ('chw', 2), ('clf', 4),
    ('clp', 0), ('cny', 2), ('cop', 2), ('cou', 2), ('crc', 2), ('cup', 2), ('cve', 2), ('czk', 2), ('djf', 0), ('dkk', 2),
    ('dop', 2), ('dzd', 2), ('egp', 2), ('ern', 2), ('etb', 2), ('eur', 2), ('fjd', 2), ('fkp', 2), ('gbp', 2), ('gel', 2),
    ('ghs', 2), ('gip', 2), ('gmd', 2), ('gnf', 0), ('gtq', 2), ('gyd', 2), ('hkd', 2), ('hnl', 2), ('htg', 2), ('huf', 2),
    ('idr', 2), ('ils', 2), ('inr', 2), ('iqd', 3), ('irr', 2), ('isk', 0), ('jmd', 2), ('jod', 3), ('jpy', 0), ('kes', 2),
    ('kgs', 2), ('khr', 2), ('kmf', 0), ('kpw', 2), ('krw', 0), ('kwd', 3), ('kyd', 2), ('kzt', 2), ('lak', 2), ('lbp', 2),
    ('lkr', 2), ('lrd', 2), ('lsl', 2), ('lyd', 3), ('mad', 2), ('mdl', 2), ('mga', 2), ('mkd', 2), ('mmk', 2), ('mnt', 2),
    ('mop', 2), ('mru', 2), ('mur', 2), ('mvr', 2), ('mwk', 2), ('mxn', 2), ('mxv', 2), ('myr', 2), ('mzn', 2), ('nad', 2),
    ('ngn', 2), ('nio', 2), ('nok', 2), ('npr', 2), ('nzd', 2), ('omr', 3), ('pab', 2), ('pen', 2), ('pgk', 2), ('php', 2),
    ('pkr', 2), ('pln', 2), ('pyg', 0), ('qar', 2), ('ron', 2), ('rsd', 2), ('rub', 2), ('rwf', 0), ('sar', 2), ('sbd', 2),
    ('scr', 2), ('sdg', 2), ('sek', 2), ('sgd', 2), ('shp', 2), ('sle', 2), ('sos', 2), ('srd', 2), ('ssp', 2), ('stn', 2),
    ('svc', 2), ('syp', 2), ('szl', 2), ('thb', 2), ('tjs', 2), ('tmt', 2), ('tnd', 3), ('top', 2), ('try', 2), ('ttd', 2),
    ('twd', 2), ('tzs', 2), ('uah', 2), ('ugx', 0), ('usd', 2), ('usn', 2), ('uyi', 0), ('uyu', 2), ('uyw', 4), ('uzs', 2),
    ('ved', 2), ('ves', 2), ('vnd', 0), ('vuv', 0), ('wst', 2), ('xaf', 0), ('xcd', 2), ('xcg', 2), ('xof', 0), ('xpf', 0),
    ('yer', 2), ('zar', 2), ('zmw', 2), ('zwg', 2);

-- The one conversion of platform floats (csl.money.to_minor is the same rule): the float's decimal
-- at 15 significant digits (float8 → numeric), times 10^exponent. The result may have a fraction:
-- callers hold such an amount as a finding, they never round it. The old one-argument function
-- (always × 100) is dropped, so nothing can convert without the currency.
DROP FUNCTION csl_ops.minor_units(double precision);
CREATE FUNCTION csl_ops.minor_units(amount double precision, exponent integer) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT $1::numeric * CASE $2 WHEN 0 THEN 1 WHEN 1 THEN 10 WHEN 2 THEN 100 WHEN 3 THEN 1000
                                       WHEN 4 THEN 10000 END $$;
-- and back, for the platform's float columns (revenue_splits.amount): exact for every amount of up
-- to 15 significant digits, so minor_units(major_units(m, e), e) = m
CREATE FUNCTION csl_ops.major_units(minor bigint, exponent integer) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ($1::numeric / CASE $2 WHEN 0 THEN 1 WHEN 1 THEN 10 WHEN 2 THEN 100 WHEN 3 THEN 1000
                                        WHEN 4 THEN 10000 END)::double precision $$;

-- 2. Where a contributor is paid: a connected account of the payment provider, filled by the
--    platform when the account can receive transfers (verified_at). A payout copies its
--    destination from here when it is instructed and never looks it up again; a contributor with
--    no verified, enabled account is not paid (a finding; the balance is carried). One account
--    pays one contributor: a typo cannot route two contributors' money to one account.
CREATE TABLE csl_ops.payout_accounts (
    contributor_id uuid        PRIMARY KEY,
    account_id     text        NOT NULL UNIQUE CHECK (account_id ~ '^acct_[A-Za-z0-9]{1,64}$'),
    verified_at    timestamptz,            -- the provider confirmed transfers to it; NULL: not (yet)
    disabled_at    timestamptz,            -- not to be paid any more (closed, under review)
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE csl_ops.payouts ADD COLUMN destination text CHECK (destination ~ '^acct_[A-Za-z0-9]{1,64}$');
COMMENT ON COLUMN csl_ops.payouts.destination IS
    'The connected account the payout pays, copied from payout_accounts when instructed; NULL only on payouts '
    'instructed before 0011 (never sent: released by the sender; sent: needs review)';

-- 3. The payout state machine: only forward transitions, and what a payout pays never changes.
--    instructed → sent | failed | needs_review;  sent → sent (a resend) | confirmed | failed |
--    needs_review;  needs_review → confirmed | failed;  confirmed and failed are final.
CREATE FUNCTION csl_ops.payout_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.run_id, NEW.contributor_id, NEW.currency, NEW.amount_minor, NEW.idempotency_key, NEW.destination,
        NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.run_id, OLD.contributor_id, OLD.currency, OLD.amount_minor, OLD.idempotency_key,
                         OLD.destination, OLD.created_at) THEN
        RAISE EXCEPTION 'payout %: its amount, currency, contributor, destination and key never change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status IN ('confirmed', 'failed') OR NOT (OLD.status, NEW.status) IN (
            ('instructed', 'sent'), ('instructed', 'failed'), ('instructed', 'needs_review'),
            ('sent', 'sent'), ('sent', 'confirmed'), ('sent', 'failed'), ('sent', 'needs_review'),
            ('needs_review', 'confirmed'), ('needs_review', 'failed')) THEN
        RAISE EXCEPTION 'payout %: % → % is not a forward transition of the payout state machine', OLD.id,
            OLD.status, NEW.status USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payouts_forward_only BEFORE UPDATE ON csl_ops.payouts
    FOR EACH ROW EXECUTE FUNCTION csl_ops.payout_transition();
-- a payout held before it was sent (needs_review) or released unsent (failed) has no send time
ALTER TABLE csl_ops.payouts DROP CONSTRAINT payouts_sent_has_time;
ALTER TABLE csl_ops.payouts ADD CONSTRAINT payouts_sent_has_time CHECK (status <> 'sent' OR first_sent_at IS NOT NULL);

-- 4. Findings that hold a licence fail the gate (blocking); findings that only hold a payout (no
--    payout account, duplicate platform splits) are recorded and the balance is carried.
ALTER TABLE csl_ops.settlement_findings
    ADD COLUMN blocking       boolean NOT NULL DEFAULT true,
    ADD COLUMN contributor_id uuid,
    ADD COLUMN currency       text;

-- 5. This installation's identity, part of every new idempotency key: two environments (or a
--    restored copy) that reuse run keys never share a key at the payment provider.
CREATE TABLE csl_ops.installation (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO csl_ops.installation DEFAULT VALUES;
