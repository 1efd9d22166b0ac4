"""PostgreSQL access: pools for the primary and the read replica, routing, retries, health.

Reads go to the replica when it answers and its replay lag is under the bound, else to the
primary (the choice is logged); writes always go to the primary. ``transaction`` retries
only what retrying can fix: serialization failures (40001) and deadlocks (40P01).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from csl.config import DatabaseSettings, mask_url, redact
from csl.errors import DatabaseError, ReplicaUnavailable

__all__ = ["RETRYABLE_SQLSTATES", "Database", "ReadRoute", "set_timeouts"]

log = logging.getLogger("csl.db")
T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected

# Replay lag as the standby sees it: zero when it has replayed all it received, else the age
# of the last replayed transaction (an idle primary must not look like a lagging replica).
REPLICA_LAG_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_s,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver_status
"""


@dataclass(frozen=True)
class ReadRoute:
    """Where reads go right now, and why."""

    target: str  # "replica" or "primary"
    reason: str
    lag_s: float | None = None


def set_timeouts(conn: psycopg.Connection, *, statement_timeout_ms: int | None = None,
                 lock_timeout_ms: int | None = None, local: bool = True) -> None:
    """Apply timeouts to the current transaction (``local``) or the session."""
    scope = "LOCAL " if local else ""
    with conn.cursor() as cur:
        if statement_timeout_ms is not None:
            cur.execute(f"SET {scope}statement_timeout = {int(statement_timeout_ms)}")
        if lock_timeout_ms is not None:
            cur.execute(f"SET {scope}lock_timeout = {int(lock_timeout_ms)}")


class Database:
    """Pools for the primary and (optionally) the replica, opened lazily."""

    def __init__(self, settings: DatabaseSettings, *, max_pool_size: int = 4,
                 route_cache_s: float = 5.0,
                 connect: Callable[..., psycopg.Connection] | None = None) -> None:
        self.settings = settings
        self._max_pool_size = max_pool_size
        self._route_cache_s = route_cache_s
        self._connect = connect or psycopg.connect
        self._pools: dict[str, ConnectionPool] = {}
        self._lock = threading.Lock()
        self._route: tuple[float, ReadRoute] | None = None
        self._last_target: str | None = None

    def __repr__(self) -> str:
        return f"Database({self.settings!r})"

    # -- connections -----------------------------------------------------------------------
    def _conninfo(self, role: str) -> str:
        url = self.settings.primary_url if role == "primary" else self.settings.replica_url
        assert url is not None
        return url

    def _redact(self, text: str, role: str) -> str:
        """A driver's message without the URL's secrets (libpq quotes parts of what it was given)."""
        url = self.settings.primary_url if role == "primary" else self.settings.replica_url
        return redact(text, url) if url else text

    def _kwargs(self) -> dict[str, Any]:
        return {
            "connect_timeout": self.settings.connect_timeout_s,
            "application_name": self.settings.application_name,
        }

    def _pool(self, role: str) -> ConnectionPool:
        with self._lock:
            pool = self._pools.get(role)
            if pool is None:
                pool = ConnectionPool(
                    self._conninfo(role),
                    kwargs=self._kwargs(),
                    min_size=0,
                    max_size=self._max_pool_size,
                    name=f"csl-{role}",
                    timeout=max(5.0, self.settings.connect_timeout_s + 2.0),
                    reconnect_timeout=30.0,
                    check=ConnectionPool.check_connection,
                    open=False,
                )
                pool.open()
                self._pools[role] = pool
            return pool

    @contextmanager
    def connection(self, *, readonly: bool = False, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection: the primary, or for ``readonly`` work the routed target."""
        role = self.read_route().target if readonly else "primary"
        try:
            with self._pool(role).connection() as conn:
                if autocommit:
                    conn.autocommit = True
                try:
                    yield conn
                finally:
                    if autocommit:
                        conn.autocommit = False
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"{role} database: {self._redact(str(exc), role)}".strip()) from exc

    def connect_direct(self, role: str = "primary", *, autocommit: bool = True) -> psycopg.Connection:
        """A fresh, unpooled connection (for DDL outside transactions, probes, COPY)."""
        if role == "replica" and not self.settings.replica_url:
            raise ReplicaUnavailable("no read replica configured (DATABASE_READ_REPLICA_URL)")
        return self._connect(self._conninfo(role), autocommit=autocommit, **self._kwargs())

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing ---------------------------------------------------------------------------
    def replica_status(self) -> dict[str, Any]:
        """Probe the replica: answers? in recovery? lag? Never raises."""
        if not self.settings.replica_url:
            return {"configured": False, "ok": False, "error": "not configured"}
        started = time.perf_counter()
        try:
            with self.connect_direct("replica") as conn:
                row = conn.execute(REPLICA_LAG_SQL).fetchone()
        except (psycopg.Error, OSError) as exc:
            return {"configured": True, "ok": False, "error": self._redact(_one_line(exc), "replica")}
        latency_ms = (time.perf_counter() - started) * 1000
        in_recovery, lag_s, receiver = row
        status: dict[str, Any] = {
            "configured": True,
            "ok": True,
            "in_recovery": in_recovery,
            "lag_s": lag_s,
            "receiver_status": receiver,
            "latency_ms": round(latency_ms, 2),
        }
        if not in_recovery:
            status.update(ok=False, error="not in recovery: this server is not a standby")
        elif lag_s is not None and not lag_s <= self.settings.max_replica_lag_s:  # NaN on either side: not ok
            status.update(ok=False, error=f"replay lag {lag_s:.1f}s exceeds {self.settings.max_replica_lag_s:g}s")
        return status

    def read_route(self, *, refresh: bool = False) -> ReadRoute:
        """Where reads go now; cached for a few seconds, logged when it changes."""
        now = time.monotonic()
        cached = self._route
        if cached and not refresh and now - cached[0] < self._route_cache_s:
            return cached[1]
        status = self.replica_status()
        if status["ok"]:
            route = ReadRoute("replica", f"replica healthy, lag {status['lag_s']:.2f}s", status["lag_s"])
        else:
            route = ReadRoute("primary", f"replica unavailable: {status.get('error')}", status.get("lag_s"))
        self._route = (now, route)
        if route.target != self._last_target:
            log.info("reads routed to %s (%s)", route.target, route.reason)
            self._last_target = route.target
        return route

    def read(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run a read-only query on the routed target and return all rows."""
        with self.connection(readonly=True) as conn:
            with conn.cursor() as cur:
                cur.execute(query, params)
                rows = cur.fetchall()
            conn.rollback()
            return rows

    # -- transactions ----------------------------------------------------------------------
    def transaction(self, work: Callable[[psycopg.Connection], T], *, retries: int = 3,
                    statement_timeout_ms: int | None = None, lock_timeout_ms: int | None = None,
                    isolation: psycopg.IsolationLevel | None = None,
                    backoff_s: float = 0.05) -> T:
        """Run ``work(conn)`` in one transaction on the primary.

        Retried with jittered exponential backoff only on serialization failures and
        deadlocks; any other error is raised at once (after rollback).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._pool("primary").connection() as conn:
                    if isolation is not None:
                        conn.isolation_level = isolation
                    try:
                        with conn.transaction():
                            set_timeouts(conn, statement_timeout_ms=statement_timeout_ms,
                                         lock_timeout_ms=lock_timeout_ms)
                            return work(conn)
                    finally:
                        if isolation is not None:
                            conn.isolation_level = None
            except psycopg.Error as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                if sqlstate in RETRYABLE_SQLSTATES and attempt <= retries:
                    delay = backoff_s * (2 ** (attempt - 1)) * (1 + random.random())
                    log.warning("transaction attempt %d hit %s (%s); retrying in %.3fs",
                                attempt, sqlstate, type(exc).__name__, delay)
                    time.sleep(delay)
                    continue
                if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
                    raise DatabaseError(f"primary database: {self._redact(_one_line(exc), 'primary')}") from exc
                raise

    # -- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Primary and replica status, replica lag and latency, and where reads go."""
        started = time.perf_counter()
        primary: dict[str, Any]
        try:
            with self.connect_direct("primary") as conn:
                version, in_recovery, streaming = conn.execute(
                    "SELECT current_setting('server_version'), pg_is_in_recovery(),"
                    " (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')"
                ).fetchone()
            primary = {
                "ok": not in_recovery,
                "version": version,
                "streaming_replicas": streaming,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
            if in_recovery:
                primary["error"] = "in recovery: DATABASE_URL points at a standby"
        except (psycopg.Error, OSError) as exc:
            primary = {"ok": False, "error": self._redact(_one_line(exc), "primary")}
        replica = self.replica_status()
        route = self.read_route(refresh=True)
        return {
            "primary": primary,
            "replica": replica,
            "reads": {"target": route.target, "reason": route.reason},
            "url": mask_url(self.settings.primary_url),
        }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


