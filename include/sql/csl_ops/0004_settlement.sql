-- Revenue-split settlement: a double-entry ledger in integer minor units.
--
-- Sign convention: postings.amount_minor > 0 is a debit, < 0 a credit; every journal entry
-- sums to zero. A contributor's payable balance is minus the sum of its account's postings.
-- posting_key makes every posting idempotent (licence × kind × contributor, refund × kind ×
-- contributor, payout): a re-run or a retried task can never post twice.

CREATE TABLE csl_ops.settlement_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key      text        NOT NULL UNIQUE,
    status       text        NOT NULL CHECK (status IN ('running', 'committed', 'gate_failed', 'failed', 'dry_run')),
    params       jsonb       NOT NULL DEFAULT '{}',
    figures      jsonb       NOT NULL DEFAULT '{}',
    gate         jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE csl_ops.ledger_accounts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('platform_revenue', 'contributor_payable', 'clearing', 'payouts_in_transit')),
    contributor_id uuid,
    currency       text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    CHECK ((kind = 'contributor_payable') = (contributor_id IS NOT NULL)),
    UNIQUE NULLS NOT DISTINCT (kind, contributor_id, currency)
);

CREATE TABLE csl_ops.journal_entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint      NOT NULL REFERENCES csl_ops.settlement_runs (id),
    kind        text        NOT NULL CHECK (kind IN ('sale', 'clawback', 'payout')),
    currency    text        NOT NULL,
    memo        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE csl_ops.postings (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id      bigint NOT NULL REFERENCES csl_ops.journal_entries (id),
    account_id    bigint NOT NULL REFERENCES csl_ops.ledger_accounts (id),
    amount_minor  bigint NOT NULL CHECK (amount_minor <> 0),
    license_id    uuid,
    source_id     text,
    posting_key   text   NOT NULL UNIQUE
);
CREATE INDEX postings_account_idx ON csl_ops.postings (account_id);
CREATE INDEX postings_entry_idx ON csl_ops.postings (entry_id);
CREATE INDEX postings_license_idx ON csl_ops.postings (license_id) WHERE license_id IS NOT NULL;

-- One row per settled licence: the "already in the ledger" marker and its split in minor units.
CREATE TABLE csl_ops.settled_licences (
    license_id        uuid PRIMARY KEY,
    run_id            bigint NOT NULL REFERENCES csl_ops.settlement_runs (id),
    currency          text   NOT NULL,
    price_minor       bigint NOT NULL CHECK (price_minor >= 0),
    contributor_minor bigint NOT NULL CHECK (contributor_minor >= 0),
    platform_minor    bigint NOT NULL CHECK (platform_minor >= 0),
    share_bps         integer NOT NULL,
    splits_reused     boolean NOT NULL DEFAULT false,
    CHECK (contributor_minor + platform_minor = price_minor)
);

-- What the run could not settle as-is: held licences and refunds, with the evidence.
CREATE TABLE csl_ops.settlement_findings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES csl_ops.settlement_runs (id),
    kind        text   NOT NULL,
    license_id  uuid,
    source_id   text,
    detail      jsonb  NOT NULL DEFAULT '{}',
    found_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlement_findings_run_idx ON csl_ops.settlement_findings (run_id);

-- Payout instructions (Stripe Connect transfer semantics): one per contributor and currency
-- whose balance reached the minimum; the idempotency key is sent with the transfer.
CREATE TABLE csl_ops.payouts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES csl_ops.settlement_runs (id),
    contributor_id   uuid   NOT NULL,
    currency         text   NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    idempotency_key  text   NOT NULL UNIQUE,
    status           text   NOT NULL CHECK (status IN ('instructed', 'sent', 'confirmed', 'failed')),
    transfer_id      text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payouts_status_idx ON csl_ops.payouts (status);
