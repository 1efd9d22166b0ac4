-- The declared performance indexes of the platform: the one source of truth for the index
-- pipeline (csl.maintenance.indexes, DAG csl_index_install). Each entry is a comment block
-- ("-- index:", "-- why:") followed by one CREATE INDEX statement, written as a person
-- would; the pipeline compares its canonical form (pg_get_indexdef) with the database,
-- builds it CONCURRENTLY, and never touches indexes that are not declared here.

-- index: idx_users_email_active
-- why: login, invitations and support look users up by email; partial, rows without email never match
CREATE INDEX idx_users_email_active ON users (email) WHERE email IS NOT NULL;

-- index: idx_users_stripe_customer_active
-- why: Stripe webhooks resolve a customer id to a user on every billing event
CREATE INDEX idx_users_stripe_customer_active ON users (stripe_customer_id) WHERE stripe_customer_id IS NOT NULL;

-- index: idx_users_role_created
-- why: admin screens list contributors and admins newest first
CREATE INDEX idx_users_role_created ON users (role, created_at);

-- index: idx_audio_samples_cultural_origin_approved
-- why: the catalogue's main filter: approved samples of one cultural origin
CREATE INDEX idx_audio_samples_cultural_origin_approved ON audio_samples (cultural_origin, approved);

-- index: idx_audio_samples_instrument_approved
-- why: browse by instrument among approved samples
CREATE INDEX idx_audio_samples_instrument_approved ON audio_samples (instrument_type, approved);

-- index: idx_audio_samples_mood_tags_gin
-- why: mood tag search (mood_tags @> ARRAY[...]) needs an inverted index on the array
CREATE INDEX idx_audio_samples_mood_tags_gin ON audio_samples USING gin (mood_tags);

-- index: idx_audio_samples_usage_rights_price
-- why: licence shop filters by usage rights and price range
CREATE INDEX idx_audio_samples_usage_rights_price ON audio_samples (usage_rights, price_personal, price_commercial, price_enterprise);

-- index: idx_audio_samples_contributor_created
-- why: a contributor's dashboard lists their samples newest first
CREATE INDEX idx_audio_samples_contributor_created ON audio_samples (contributor_id, created_at);

-- index: idx_audio_samples_download_count_desc
-- why: "most downloaded" rankings read the top of this index
CREATE INDEX idx_audio_samples_download_count_desc ON audio_samples (download_count DESC);

-- index: idx_generations_status_created
-- why: the generation worker picks pending jobs oldest first; ops watch failures by time
CREATE INDEX idx_generations_status_created ON generations (status, created_at);

-- index: idx_generations_user_type_created
-- why: a user's generation history, filtered by type, newest first
CREATE INDEX idx_generations_user_type_created ON generations (user_id, type, created_at);

-- index: idx_generations_processing_time
-- why: processing-time percentiles and slow-job reports over finished generations only
CREATE INDEX idx_generations_processing_time ON generations (processing_time) WHERE processing_time IS NOT NULL;

-- index: idx_licenses_payment_status_active
-- why: settlement and support filter licences by payment status and active flag
CREATE INDEX idx_licenses_payment_status_active ON licenses (payment_status, active);

-- index: idx_licenses_user_created
-- why: a buyer's licence list, newest first
CREATE INDEX idx_licenses_user_created ON licenses (user_id, created_at);

-- index: idx_licenses_expiry_active
-- why: the expiry job finds active licences about to expire; perpetual licences excluded
CREATE INDEX idx_licenses_expiry_active ON licenses (expiry_date, active) WHERE expiry_date IS NOT NULL;

-- index: idx_licenses_downloads_usage
-- why: download-limit checks on capped licences only
CREATE INDEX idx_licenses_downloads_usage ON licenses (downloads_used, download_limit) WHERE download_limit IS NOT NULL;

-- index: idx_revenue_splits_contributor_status
-- why: a contributor's pending and paid royalties
CREATE INDEX idx_revenue_splits_contributor_status ON revenue_splits (contributor_id, status);

-- index: idx_revenue_splits_license_amount
-- why: reconciling the splits of a licence against its price
CREATE INDEX idx_revenue_splits_license_amount ON revenue_splits (license_id, amount);

-- index: revenue_splits_license_contributor_key
-- why: one split per licence and contributor: a split the old platform inserts while a settlement run writes the same licence fails cleanly instead of leaving a duplicate that could be paid twice (built once the settlement audit's duplicate_splits findings are resolved)
CREATE UNIQUE INDEX revenue_splits_license_contributor_key ON revenue_splits (license_id, contributor_id);

-- index: idx_revenue_splits_payment_date
-- why: payout reports by payment date, paid splits only
CREATE INDEX idx_revenue_splits_payment_date ON revenue_splits (payment_date) WHERE payment_date IS NOT NULL;

-- index: idx_payment_intents_user_status_created
-- why: a user's payment history by status, newest first
CREATE INDEX idx_payment_intents_user_status_created ON payment_intents (user_id, status, created_at);

-- index: idx_subscriptions_user_status_period
-- why: "is this user subscribed now?" on every gated request
CREATE INDEX idx_subscriptions_user_status_period ON subscriptions (user_id, status, current_period_end);

-- index: idx_invoices_customer_status_due
-- why: dunning finds a customer's open invoices by due date
CREATE INDEX idx_invoices_customer_status_due ON invoices (customer_id, status, due_date);

-- index: idx_license_events_license_type_created
-- why: a licence's audit trail by event type, in time order
CREATE INDEX idx_license_events_license_type_created ON license_events (license_id, event_type, created_at);
