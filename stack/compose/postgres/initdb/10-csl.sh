#!/bin/bash
# The platform database's roles, extensions and database, made once on an empty data directory by
# the postgres image's entrypoint (like scripts/devstack.py's pg_bootstrap, pg_advisor_role and
# pg_metrics_role). Passwords arrive in the environment and go to psql as variables (:'name',
# quoted by psql), never into the SQL text or a command line.
set -euo pipefail
: "${CSL_DB_PASSWORD:?}" "${REPLICATOR_PASSWORD:?}" "${METRICS_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v csl_password="$CSL_DB_PASSWORD" -v replicator_password="$REPLICATOR_PASSWORD" \
    -v metrics_password="$METRICS_DB_PASSWORD" <<'SQL'
-- the pipelines' login (DDL of csl_ops, CREATE INDEX CONCURRENTLY, pg_cancel_backend of its own)
CREATE ROLE csl LOGIN PASSWORD :'csl_password';
GRANT pg_monitor, pg_signal_backend TO csl;
-- the streaming replica's login
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'replicator_password';
-- the exporters' login: statistics and the figures' tables, read-only, bounded
CREATE ROLE csl_metrics LOGIN CONNECTION LIMIT 6 PASSWORD :'metrics_password';
ALTER ROLE csl_metrics SET default_transaction_read_only = on;
ALTER ROLE csl_metrics SET statement_timeout = '10s';
GRANT pg_monitor, pg_read_all_data TO csl_metrics;
-- the role the report's index advisor plans under (csl.reports.advice)
CREATE ROLE csl_advisor NOLOGIN;
GRANT pg_monitor, pg_read_all_data TO csl_advisor;
GRANT csl_advisor TO csl;
-- extensions need a superuser: made in template1, so every database created later has them
\connect template1
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE EXTENSION IF NOT EXISTS pgstattuple;
\connect postgres
CREATE DATABASE cultural_sound_lab OWNER csl;
SQL

# the replica's pg_basebackup and walreceiver connect as replicator, with a password (SCRAM)
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
