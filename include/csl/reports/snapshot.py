"""Statistics snapshots: cumulative counters copied into ``csl_ops`` so reports can diff them.

One snapshot = one transaction on the primary (the statistics views are read from one
consistent statistics snapshot). Cheap by design: a few set-based ``INSERT … SELECT``. Each
replica it is given is read first (one statement there: who answered and every index's scan
counter — a hot standby counts its own scans), so an index the platform only uses through the
read replica is never taken for unused; a replica that cannot be read is recorded as such.
Query texts that may carry a secret are stored redacted (``csl_ops.carries_secret``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from csl.errors import CslError
from csl.sqlfiles import load

MARK = "/* csl:perf-report */ "  # on every statement the report runs, so its own work is not reported

__all__ = ["MARK", "ReplicaConnect", "Snapshot", "capture", "latest_snapshot", "prune", "snapshots_between"]

ReplicaConnect = Callable[[], psycopg.Connection]  # a fresh autocommit connection to one replica

log = logging.getLogger("csl.reports")


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot's header."""

    id: int
    taken_at: Any
    pgss_stats_reset: Any
    db_stats_reset: Any
    capture_ms: int = 0
    rows_written: int = 0
    replicas: dict[str, str] = field(default_factory=dict, compare=False)  # name → "ok" or why not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pgss_info(conn: psycopg.Connection) -> tuple[Any, Any, bool]:
    """(stats_reset, dealloc, installed) of pg_stat_statements in this database."""
    installed = conn.execute(MARK + "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')"
                             ).fetchone()[0]
    if not installed:
        return None, None, False
    reset, dealloc = conn.execute(MARK + "SELECT stats_reset, dealloc FROM pg_stat_statements_info").fetchone()
    return reset, dealloc, True


_CREDENTIALS = re.compile(r"(://[^/:@\s]*:)[^@\s]*@|(password\s*=\s*)\S+", re.IGNORECASE)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", text)[:300]


def _read_replica(name: str, connect: ReplicaConnect, database: str, timeout_ms: int) -> dict[str, Any]:
    """One replica's answer, or why there is none (never raises for the replica's sake)."""
    try:
        with connect() as rconn:
            rconn.execute(f"SET statement_timeout = {int(timeout_ms)}")
            row = rconn.execute(MARK + load("reports/replica_indexes.sql")).fetchone()
    except (psycopg.Error, OSError, CslError) as exc:
        log.warning("replica %s not read for the snapshot: %s", name, _one_line(exc))
        return {"replica": name, "status": "unavailable", "error": _one_line(exc)}
    server, in_recovery, started, stats_reset, dbname, indexrelids, scans = row
    if dbname != database:
        return {"replica": name, "status": "unavailable",
                "error": f"connected to database {dbname!r}, not {database!r}"}
    return {"replica": name, "status": "ok", "error": None, "server": server, "in_recovery": in_recovery,
            "postmaster_start": started, "stats_reset": stats_reset, "indexrelids": indexrelids, "scans": scans}


def capture(conn: psycopg.Connection, *, replicas: Mapping[str, ReplicaConnect] | None = None,
            lock_timeout_ms: int = 2000, statement_timeout_ms: int = 120_000,
            replica_timeout_ms: int = 10_000) -> Snapshot:
    """Take one snapshot; returns its header (id, time, reset times, cost, each replica's status).

    ``conn`` is an autocommit connection to the primary. ``replicas``: name → a callable that
    opens a fresh connection to that replica, in the same database (``Database.connect_direct
    ("replica")``); each is read on its own thread while the primary is (connecting is most of
    its cost) and recorded as ``ok`` or ``unavailable`` with the reason. Sizes are exact unless a table is held exclusively locked
    past ``lock_timeout_ms``: then the snapshot is taken again with sizes as of the last
    VACUUM/ANALYZE (never waits behind a long lock, never fails for it).
    """
    started = time.perf_counter()
    database = conn.info.dbname
    pool = ThreadPoolExecutor(max_workers=len(replicas), thread_name_prefix="csl-replica") if replicas else None
    pending = [pool.submit(_read_replica, name, connect, database, replica_timeout_ms)
               for name, connect in (replicas or {}).items()] if pool else []
    try:
        return _capture(conn, pending, started, lock_timeout_ms=lock_timeout_ms,
                        statement_timeout_ms=statement_timeout_ms)
    finally:
        if pool:
            pool.shutdown(wait=True)


def _capture(conn: psycopg.Connection, pending: list, started: float, *, lock_timeout_ms: int,
             statement_timeout_ms: int) -> Snapshot:
    read: list[dict[str, Any]] = []
    for exact in (True, False):
        try:
            with conn.transaction():
                conn.execute(MARK + f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                conn.execute(MARK + f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
                reset, dealloc, has_pgss = _pgss_info(conn)
                snap_id, taken_at = conn.execute(MARK + load("reports/snapshot_header.sql"),
                                                 {"pgss_stats_reset": reset, "pgss_dealloc": dealloc}).fetchone()
                rows = 0
                if has_pgss:
                    rows += conn.execute(MARK + load("reports/capture_statements.sql"), {"snapshot_id": snap_id}).rowcount
                params = {"snapshot_id": snap_id, "exact_sizes": exact}
                rows += conn.execute(MARK + load("reports/capture_tables.sql"), params).rowcount
                rows += conn.execute(MARK + load("reports/capture_indexes.sql"), params).rowcount
                read = read or [f.result() for f in pending]
                for r in read:
                    rows += conn.execute(MARK + load("reports/capture_replica.sql"), {
                        "snapshot_id": snap_id, "server": None, "in_recovery": None, "postmaster_start": None,
                        "stats_reset": None, "indexrelids": [], "scans": [], **r}).rowcount
                capture_ms = int((time.perf_counter() - started) * 1000)
                db_reset = conn.execute(
                    MARK + "UPDATE csl_ops.perf_snapshots SET capture_ms = %s, rows_written = %s,"
                    " figures = figures || jsonb_build_object('exact_sizes', %s::boolean,"
                    " 'pg_stat_statements', %s::boolean) WHERE id = %s RETURNING db_stats_reset",
                    (capture_ms, rows + 1, exact, has_pgss, snap_id)).fetchone()[0]
            break
        except psycopg.errors.LockNotAvailable:
            if not exact:
                raise
            log.warning("a table is locked exclusively: snapshot sizes from relpages instead")
    log.info("snapshot %s: %d rows in %d ms", snap_id, rows + 1, capture_ms)
    return Snapshot(snap_id, taken_at, reset, db_reset, capture_ms, rows + 1,
                    {r["replica"]: "ok" if r["status"] == "ok" else f"unavailable: {r['error']}" for r in read})


def prune(conn: psycopg.Connection, *, retention_days: int) -> int:
    """Delete snapshots older than ``retention_days`` (their rows cascade); returns how many."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    with conn.transaction():
        return conn.execute(MARK + load("reports/retention.sql"), {"days": retention_days}).rowcount


_COLUMNS = "id, taken_at, pgss_stats_reset, db_stats_reset, capture_ms, rows_written"


def _snapshot(row: tuple | None) -> Snapshot | None:
    return Snapshot(*row) if row else None


def snapshots_between(conn: psycopg.Connection, start: Any, end: Any) -> list[Snapshot]:
    """Snapshots of this database taken in ``[start, end]``, oldest first."""
    rows = conn.execute(MARK + f"SELECT {_COLUMNS} FROM csl_ops.perf_snapshots WHERE database_name = current_database()"
                        " AND taken_at BETWEEN %s AND %s ORDER BY taken_at, id", (start, end)).fetchall()
    return [Snapshot(*r) for r in rows]


def latest_snapshot(conn: psycopg.Connection, *, before: Any = None) -> Snapshot | None:
    """The newest snapshot (taken before ``before`` when given)."""
    if before is None:
        row = conn.execute(MARK + f"SELECT {_COLUMNS} FROM csl_ops.perf_snapshots WHERE database_name = current_database()"
                           " ORDER BY taken_at DESC, id DESC LIMIT 1").fetchone()
    else:
        row = conn.execute(MARK + f"SELECT {_COLUMNS} FROM csl_ops.perf_snapshots WHERE database_name = current_database()"
                           " AND taken_at < %s ORDER BY taken_at DESC, id DESC LIMIT 1", (before,)).fetchone()
    return _snapshot(row)


def get_snapshot(conn: psycopg.Connection, snapshot_id: int) -> Snapshot | None:
    return _snapshot(conn.execute(MARK + f"SELECT {_COLUMNS} FROM csl_ops.perf_snapshots WHERE id = %s",
                                  (snapshot_id,)).fetchone())
