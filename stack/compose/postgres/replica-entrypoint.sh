#!/bin/bash
# The streaming replica of docker-compose.yaml (runs as the postgres user): on an empty data
# directory, pg_basebackup -R from the primary (-R writes standby.signal and primary_conninfo);
# then the standby runs with the primary's settings (the -c flags it is given).
# The replicator's password goes into a 0600 passfile that primary_conninfo names, so neither
# postgresql.auto.conf nor any command line carries it (-R copies a password only when one is
# given in the connection string). A password with ':' or '\' would need escaping there: the
# env example asks for hex secrets.
set -euo pipefail
: "${PRIMARY_HOST:?}" "${REPLICATOR_PASSWORD:?}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
passfile="${HOME:-/var/lib/postgresql}/replicator.pgpass"
(umask 077 && printf '%s:%s:*:replicator:%s\n' "$PRIMARY_HOST" "$PRIMARY_PORT" "$REPLICATOR_PASSWORD" > "$passfile")
unset REPLICATOR_PASSWORD

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do
        echo "waiting for the primary $PRIMARY_HOST:$PRIMARY_PORT"
        sleep 2
    done
    echo "pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT"
    pg_basebackup -d "host=$PRIMARY_HOST port=$PRIMARY_PORT user=replicator passfile=$passfile application_name=replica" \
        -D "$PGDATA" -X stream -c fast -R
fi
chmod 0700 "$PGDATA"
exec postgres "$@"
