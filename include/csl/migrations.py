"""Versioned migrations: ``include/sql/csl_ops/NNNN_name.sql`` (and, for dev/test only, the
platform schema in ``include/sql/platform/``).

Applied in order, each in its own transaction together with its ``schema_migrations`` row,
under an advisory lock so two runners never interleave. Re-running is a no-op; a file that
changed after it was applied is refused (its checksum no longer matches).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from csl.errors import DatabaseError
from csl.sqlfiles import sql_dir

__all__ = ["COMPONENTS", "Migration", "applied", "discover", "migrate"]

log = logging.getLogger("csl.migrations")

COMPONENTS = ("platform", "csl_ops")  # platform first: csl_ops may reference its tables
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x63736C5F6F7073  # "csl_ops": one lock for every migration runner

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS csl_ops;
CREATE TABLE IF NOT EXISTS csl_ops.schema_migrations (
    component   text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL,
    PRIMARY KEY (component, version)
);
COMMENT ON TABLE csl_ops.schema_migrations IS 'One row per applied migration file (csl migrate).';
"""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(component: str, root: Path | None = None) -> list[Migration]:
    folder = (root or sql_dir()) / component
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise DatabaseError(f"migration file {path.name!r} in {folder} is not named NNNN_name.sql")
        found.append(Migration(component, int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"duplicate migration versions in {folder}: {versions}")
    return found


def applied(conn: psycopg.Connection) -> dict[tuple[str, int], str]:
    exists = conn.execute("SELECT to_regclass('csl_ops.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute("SELECT component, version, checksum FROM csl_ops.schema_migrations").fetchall()
    return {(c, v): s for c, v, s in rows}


def migrate(conn: psycopg.Connection, *, components: tuple[str, ...] = ("csl_ops",),
            root: Path | None = None, lock_timeout_s: float = 10.0) -> list[dict[str, object]]:
    """Apply pending migrations of ``components``; return what was applied (empty = no-op).

    ``conn`` must be an autocommit connection to the primary; every migration runs in its
    own transaction, with ``lock_timeout_s``: a migration that would queue behind a long
    transaction (and block every query on the table behind it) stops instead, naming the table
    lock it waited for, with nothing of it applied.
    """
    if not 0 < lock_timeout_s <= 3600:
        raise DatabaseError(f"lock_timeout_s must be in (0, 3600], got {lock_timeout_s!r}")
    if not conn.autocommit:
        raise DatabaseError("migrate needs an autocommit connection (each migration is its own transaction)")
    ordered = [c for c in COMPONENTS if c in components]
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise DatabaseError(f"unknown migration component(s): {', '.join(sorted(unknown))}")
    done: list[dict[str, object]] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        with conn.transaction():
            conn.execute(_BOOTSTRAP)
        already = applied(conn)
        for component in ordered:
            for migration in discover(component, root):
                key = (component, migration.version)
                if key in already:
                    if already[key] != migration.checksum:
                        raise DatabaseError(
                            f"migration {component}/{migration.path.name} changed after it was applied "
                            "(checksum differs); add a new migration instead of editing an applied one"
                        )
                    continue
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
                        conn.execute(migration.sql)
                        duration_ms = int((time.perf_counter() - started) * 1000)
                        conn.execute(
                            "INSERT INTO csl_ops.schema_migrations (component, version, name, checksum, duration_ms)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            (component, migration.version, migration.name, migration.checksum, duration_ms),
                        )
                except psycopg.errors.LockNotAvailable as exc:
                    raise DatabaseError(
                        f"migration {component}/{migration.path.name}: a lock was not granted within "
                        f"{lock_timeout_s:g} s ({str(exc).strip().splitlines()[0]}); another session holds it: "
                        "nothing of this migration was applied, run it again when that session is done") from None
                log.info("applied %s/%s in %d ms", component, migration.path.name, duration_ms)
                done.append({"component": component, "version": migration.version,
                             "name": migration.name, "duration_ms": duration_ms})
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done
