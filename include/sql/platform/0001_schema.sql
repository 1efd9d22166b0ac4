-- The Cultural Sound Lab platform schema, as its API (Prisma) defines it: for dev and test
-- stacks only (production already has it). Money columns are double precision, as in the
-- platform; our pipelines convert them to integer minor units. The 23 "critical" indexes
-- are NOT here: installing them is the index pipeline's job (include/sql/indexes/).
-- Extensions (pg_stat_statements, hypopg, pgstattuple) need a superuser: the stack
-- scripts create them (in template1, so every new database has them).

CREATE TYPE user_role         AS ENUM ('user', 'admin', 'cultural_contributor');
CREATE TYPE usage_rights      AS ENUM ('personal', 'commercial', 'enterprise');
CREATE TYPE generation_type   AS ENUM ('sound_logo', 'playlist', 'social_clip', 'long_form');
CREATE TYPE generation_status AS ENUM ('pending', 'processing', 'completed', 'failed');
CREATE TYPE payment_status    AS ENUM ('pending', 'completed', 'failed', 'refunded');
CREATE TYPE split_status      AS ENUM ('pending', 'paid', 'failed');

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL UNIQUE,
    name                text,
    role                user_role NOT NULL DEFAULT 'user',
    avatar_url          text,
    cultural_background text,
    stripe_customer_id  text,
    subscription_status text NOT NULL DEFAULT 'inactive',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audio_samples (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title                text NOT NULL,
    description          text,
    file_url             text NOT NULL,
    file_size            integer NOT NULL,
    duration             double precision NOT NULL,
    format               text NOT NULL,
    sample_rate          integer NOT NULL,
    cultural_origin      text NOT NULL,
    instrument_type      text NOT NULL,
    mood_tags            text[] NOT NULL DEFAULT '{}',
    usage_rights         usage_rights NOT NULL,
    price_personal       double precision NOT NULL,
    price_commercial     double precision NOT NULL,
    price_enterprise     double precision NOT NULL,
    contributor_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    cultural_context     text,
    attribution_required boolean NOT NULL DEFAULT true,
    approved             boolean NOT NULL DEFAULT false,
    download_count       integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audio_samples_contributor_id_idx ON audio_samples (contributor_id);
CREATE INDEX audio_samples_approved_idx ON audio_samples (approved);

CREATE TABLE generations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type            generation_type NOT NULL,
    status          generation_status NOT NULL DEFAULT 'pending',
    parameters      jsonb NOT NULL DEFAULT '{}',
    result_url      text,
    error_message   text,
    processing_time integer,
    source_samples  text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generations_user_id_idx ON generations (user_id);
CREATE INDEX generations_status_idx ON generations (status);

CREATE TABLE payment_intents (
    id                  text PRIMARY KEY,
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount              double precision NOT NULL,
    currency            text NOT NULL DEFAULT 'usd',
    status              text NOT NULL,
    metadata            jsonb,
    failure_reason      text,
    cancellation_reason text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_intents_user_id_idx ON payment_intents (user_id);
CREATE INDEX payment_intents_status_idx ON payment_intents (status);

CREATE TABLE licenses (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    audio_sample_id   uuid REFERENCES audio_samples (id) ON DELETE CASCADE,
    generation_id     uuid REFERENCES generations (id) ON DELETE CASCADE,
    license_type      usage_rights NOT NULL,
    price             double precision NOT NULL,
    payment_status    payment_status NOT NULL DEFAULT 'pending',
    payment_intent_id text,
    usage_terms       text,
    expiry_date       timestamptz,
    download_limit    integer,
    downloads_used    integer NOT NULL DEFAULT 0,
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX licenses_user_id_idx ON licenses (user_id);
CREATE INDEX licenses_audio_sample_id_idx ON licenses (audio_sample_id);
CREATE INDEX licenses_generation_id_idx ON licenses (generation_id);
CREATE INDEX licenses_payment_status_idx ON licenses (payment_status);
CREATE INDEX licenses_payment_intent_id_idx ON licenses (payment_intent_id);

CREATE TABLE revenue_splits (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    license_id     uuid NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    contributor_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount         double precision NOT NULL,
    percentage     double precision NOT NULL,
    status         split_status NOT NULL DEFAULT 'pending',
    payment_date   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revenue_splits_license_id_idx ON revenue_splits (license_id);
CREATE INDEX revenue_splits_contributor_id_idx ON revenue_splits (contributor_id);
CREATE INDEX revenue_splits_status_idx ON revenue_splits (status);

CREATE TABLE subscriptions (
    id                   text PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    customer_id          text NOT NULL,
    price_id             text NOT NULL,
    status               text NOT NULL,
    current_period_start timestamptz NOT NULL,
    current_period_end   timestamptz NOT NULL,
    trial_end            timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    canceled_at          timestamptz,
    metadata             jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_id_idx ON subscriptions (user_id);
CREATE INDEX subscriptions_status_idx ON subscriptions (status);

CREATE TABLE invoices (
    id              text PRIMARY KEY,
    customer_id     text NOT NULL,
    subscription_id text REFERENCES subscriptions (id) ON DELETE CASCADE,
    amount_due      double precision NOT NULL,
    amount_paid     double precision NOT NULL,
    currency        text NOT NULL,
    status          text NOT NULL,
    invoice_url     text,
    invoice_pdf     text,
    due_date        timestamptz,
    paid_at         timestamptz,
    metadata        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_subscription_id_idx ON invoices (subscription_id);
CREATE INDEX invoices_status_idx ON invoices (status);

CREATE TABLE refunds (
    id                text PRIMARY KEY,
    payment_intent_id text NOT NULL REFERENCES payment_intents (id) ON DELETE CASCADE,
    amount            double precision NOT NULL,
    currency          text NOT NULL,
    reason            text,
    status            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment_intent_id_idx ON refunds (payment_intent_id);
CREATE INDEX refunds_status_idx ON refunds (status);

CREATE TABLE disputes (
    id             text PRIMARY KEY,
    charge_id      text NOT NULL,
    amount         double precision NOT NULL,
    currency       text NOT NULL,
    reason         text,
    status         text NOT NULL,
    evidence_due_by timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disputes_status_idx ON disputes (status);

CREATE TABLE license_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    license_id uuid NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    event_type text NOT NULL,
    event_data jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX license_events_license_id_idx ON license_events (license_id);

CREATE TABLE subscription_products (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    stripe_product_id text NOT NULL UNIQUE,
    stripe_price_id   text NOT NULL UNIQUE,
    name              text NOT NULL,
    description       text,
    price             double precision NOT NULL,
    currency          text NOT NULL DEFAULT 'usd',
    interval          text NOT NULL,
    interval_count    integer NOT NULL DEFAULT 1,
    features          jsonb,
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
