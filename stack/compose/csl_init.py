"""docker-compose.yaml's one-shot set-up, run by ``airflow-init`` after ``airflow db migrate`` and
the pools: everything else the DAGs expect to find, from the same ``AIRFLOW_CONN_*`` connections
the tasks read (``csl_airflow.connections``), so a connection the DAGs would refuse fails here first.

1. the simple auth manager's passwords file (the admin's password from ``AIRFLOW_ADMIN_PASSWORD``,
   which only this container gets), 0600 on the volume the api-server reads it from;
2. the buckets on both S3 endpoints (``StorageProvider.ensure_buckets``, as the local stack does):
   each provider's bucket private, the primary's published bucket readable under the published
   prefixes only; idempotent;
3. the ``csl_ops`` migrations; with ``CSL_MIGRATE_WITH_PLATFORM_SCHEMA=true`` also the platform's own
   schema (a trial deployment on the compose's empty platform database; production has it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("csl.compose_init")


def write_passwords() -> None:
    path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    password = os.environ.pop("AIRFLOW_ADMIN_PASSWORD", "")
    if not password:
        raise SystemExit("AIRFLOW_ADMIN_PASSWORD is empty")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"admin": password}, out)
    os.chmod(path, 0o600)
    log.info("wrote %s", path)


def ensure_buckets(settings, *, timeout_s: float = 60) -> None:
    from csl.storage import StorageProvider

    for provider in settings.storage:  # a fresh endpoint answers its health check a moment before it takes requests
        created = StorageProvider(provider).ensure_buckets(wait_s=timeout_s)
        log.info("buckets on %s: %s", provider.name, ", ".join(created) or "all there already")


def migrate(settings, *, with_platform_schema: bool) -> None:
    from csl.db import Database
    from csl.migrations import migrate as apply

    components = ("platform", "csl_ops") if with_platform_schema else ("csl_ops",)
    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        done = apply(conn, components=components)
    for step in done:
        log.info("applied %s/%04d_%s", step["component"], step["version"], step["name"])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from csl.config import parse_bool
    from csl_airflow.connections import settings_from_connections

    write_passwords()
    settings = settings_from_connections()
    ensure_buckets(settings)
    migrate(settings, with_platform_schema=parse_bool("CSL_MIGRATE_WITH_PLATFORM_SCHEMA",
                                                      os.environ.get("CSL_MIGRATE_WITH_PLATFORM_SCHEMA", "false")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
