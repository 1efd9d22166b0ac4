"""The declared index catalog: diff against ``pg_catalog``, plan, online builds, repair.

What a careful DBA does, and the platform's script did not:

- compare *canonical* definitions (``pg_get_indexdef``), not names alone: each declared
  statement is built on an empty shadow of its table in a rolled-back transaction to learn
  its canonical text;
- ``missing`` → ``CREATE INDEX CONCURRENTLY``; ``invalid`` (a failed concurrent build) →
  drop concurrently, build again; ``drifted`` → build the declared definition under a
  temporary name, then drop the old one concurrently and rename, so the table never lacks
  the index; ``unknown`` indexes on managed tables are reported and never touched;
- every build outside a transaction with ``lock_timeout``/``statement_timeout``; a lock
  timeout is retried with backoff and, when retries run out, reported with the blocking
  sessions (``pg_blocking_pids``); a failed build never leaves an INVALID index behind;
- builds on one table never overlap (an advisory lock per table), whatever the pool size.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

from csl.errors import BadInput, ProblemFound
from csl.sqlfiles import sql_dir

__all__ = [
    "BUILD_ACTIONS",
    "BuildResult",
    "CatalogError",
    "DeclaredIndex",
    "IndexBuildError",
    "IndexPlan",
    "IndexRunFailed",
    "IndexRunReport",
    "IndexState",
    "PlanItem",
    "apply",
    "build_index",
    "build_planned",
    "diff",
    "format_results",
    "load_catalog",
    "make_plan",
    "plan_indexes",
    "report_run",
    "select",
]

log = logging.getLogger("csl.maintenance.indexes")

TEMP_SUFFIX = "_csl_new"
BUILD_ACTIONS = ("build", "rebuild", "swap")  # the plan actions that build something
_BLOCK = re.compile(r"--\s*index:\s*(?P<name>\S+)\s*\n(?P<comments>(?:--.*\n)*)(?P<stmt>CREATE\s[^;]+);", re.IGNORECASE)
_STMT = re.compile(r"^CREATE\s+(?P<unique>UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
                   r"(?P<name>\w+)\s+ON\s+(?:ONLY\s+)?(?P<table>\w+)\b(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)


class CatalogError(BadInput):
    """The catalog file is malformed, or a request names an index it does not declare."""


class IndexBuildError(ProblemFound):
    """A build failed; the message says why, and any INVALID leftover was removed."""

    def __init__(self, message: str, *, result: BuildResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class DeclaredIndex:
    name: str
    table: str
    statement: str  # as written in the catalog
    why: str
    unique: bool

    def statement_for(self, *, name: str | None = None, table: str | None = None, concurrently: bool = False) -> str:
        """The declared statement, optionally renamed, retargeted, or CONCURRENTLY."""
        match = _STMT.match(self.statement)
        assert match  # validated when the catalog was loaded
        head = "CREATE UNIQUE INDEX" if self.unique else "CREATE INDEX"
        if concurrently:
            head += " CONCURRENTLY"
        return f"{head} {name or self.name} ON {table or self.table}{match.group('rest')}"


@dataclass
class IndexState:
    name: str
    table: str
    status: str  # missing | invalid | drifted | ok | unknown | blocked
    declared: str | None = None
    actual: str | None = None
    size_bytes: int | None = None
    reason: str = ""


@dataclass
class PlanItem:
    name: str
    table: str
    action: str  # build | rebuild | swap | skip | leave | blocked
    reason: str
    statement: str | None = None


@dataclass
class BuildResult:
    name: str
    table: str
    action: str
    status: str = "pending"  # success | failed
    attempts: int = 0
    duration_ms: int = 0
    size_bytes: int | None = None
    valid: bool | None = None
    error: str | None = None
    blockers: list[dict[str, Any]] = field(default_factory=list)
    cleaned_up: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the catalog ------------------------------------------------------------------------------
def load_catalog(path: Path | None = None) -> list[DeclaredIndex]:
    path = path or sql_dir() / "maintenance" / "index_catalog.sql"
    text = path.read_text()
    found: list[DeclaredIndex] = []
    for block in _BLOCK.finditer(text):
        statement = " ".join(block.group("stmt").split())
        match = _STMT.match(statement)
        if not match:
            raise CatalogError(f"{path.name}: entry {block.group('name')!r}: not a CREATE INDEX … ON table statement")
        if match.group("name") != block.group("name"):
            raise CatalogError(f"{path.name}: entry {block.group('name')!r} creates {match.group('name')!r}")
        why = " ".join(line.split(":", 1)[1].strip() for line in block.group("comments").splitlines()
                       if line.lstrip("- ").lower().startswith("why:"))
        if not why:
            raise CatalogError(f"{path.name}: entry {block.group('name')!r} has no '-- why:' line")
        if len(match.group("name")) + len(TEMP_SUFFIX) > 63:
            raise CatalogError(f"{path.name}: index name {match.group('name')!r} is too long to swap safely")
        found.append(DeclaredIndex(name=match.group("name"), table=match.group("table"), statement=statement,
                                   why=why, unique=bool(match.group("unique"))))
    names = [d.name for d in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CatalogError(f"{path.name}: declared more than once: {', '.join(duplicates)}")
    if not found:
        raise CatalogError(f"{path.name}: no index declared")
    return found


def select(catalog: list[DeclaredIndex], only: Iterable[str] | None) -> list[DeclaredIndex]:
    """The entries named in ``only`` (all when empty); an unknown name is an error."""
    wanted = list(only or [])
    if not wanted:
        return catalog
    known = {d.name for d in catalog}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise CatalogError(f"not in the index catalog: {', '.join(unknown)}")
    return [d for d in catalog if d.name in wanted]


# -- diff -------------------------------------------------------------------------------------
def _tail(definition: str) -> str:
    """What follows ``ON schema.table`` in pg_get_indexdef, plus uniqueness."""
    match = re.match(r"^CREATE (UNIQUE )?INDEX \S+ ON (?:ONLY )?\S+ (.*)$", definition)
    if not match:
        return definition
    return f"{'UNIQUE ' if match.group(1) else ''}{match.group(2)}"


def canonical_definitions(conn: psycopg.Connection, catalog: list[DeclaredIndex], schema: str = "public") -> dict[str, str]:
    """Each declared index's ``pg_get_indexdef`` tail, learnt on empty shadow tables.

    Runs in a transaction that is always rolled back: nothing is left behind.
    """
    canonical: dict[str, str] = {}
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL lock_timeout = '5s'")
        shadows: dict[str, str] = {}
        for number, table in enumerate(sorted({d.table for d in catalog})):
            shadow = f"csl_shadow_{number}"
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}.{}) ON COMMIT DROP").format(
                sql.Identifier(shadow), sql.Identifier(schema), sql.Identifier(table)))
            shadows[table] = shadow
        for declared in catalog:
            conn.execute(declared.statement_for(table=f"pg_temp.{shadows[declared.table]}"))
            row = conn.execute("SELECT pg_get_indexdef(c.oid) FROM pg_class c WHERE c.relname = %s "
                               "AND c.relnamespace = pg_my_temp_schema()", (declared.name,)).fetchone()
            canonical[declared.name] = _tail(row[0])
    return canonical


_ACTUAL = """
SELECT c.relname, t.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready,
       pg_relation_size(i.indexrelid), con.oid IS NOT NULL
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x')
WHERE n.nspname = %s AND t.relname = ANY(%s)
ORDER BY t.relname, c.relname
"""


def diff(conn: psycopg.Connection, catalog: list[DeclaredIndex], *, schema: str = "public",
         full_catalog: list[DeclaredIndex] | None = None) -> list[IndexState]:
    """State of each declared index, then the unknown ones on the managed tables."""
    canonical = canonical_definitions(conn, catalog, schema)
    everything = full_catalog or catalog
    tables = sorted({d.table for d in everything})
    rows = conn.execute(_ACTUAL, (schema, tables)).fetchall()
    if not conn.autocommit:
        conn.rollback()
    actual = {r[0]: r for r in rows}
    states: list[IndexState] = []
    for declared in catalog:
        row = actual.get(declared.name)
        state = IndexState(declared.name, declared.table, "ok", declared=canonical[declared.name])
        if row is None:
            state.status, state.reason = "missing", "not in pg_index"
        else:
            _, table, definition, valid, ready, size, _ = row
            state.actual, state.size_bytes = _tail(definition), size
            if not valid or not ready:
                state.status = "invalid"
                state.reason = f"indisvalid={valid}, indisready={ready} (a failed or interrupted concurrent build)"
            elif table != declared.table or state.actual != state.declared:
                state.status = "drifted"
                state.reason = f"definition differs: has `{state.actual}`, declared `{state.declared}`"
            else:
                state.reason = "valid and as declared"
        states.append(state)
    for state, declared in zip(states, catalog, strict=True):
        if declared.unique and state.status in ("missing", "invalid", "drifted"):
            groups = _duplicate_groups(conn, declared, schema)
            if groups:
                state.status = "blocked"
                state.reason = (f"{groups:,} duplicate key group(s) in {declared.table}: a unique index cannot be built "
                                f"until they are resolved ({state.reason})")
    declared_names = {d.name for d in everything}
    for name, (_, table, definition, valid, _ready, size, constraint) in actual.items():
        if name in declared_names or constraint:
            continue
        if name.endswith(TEMP_SUFFIX) and name[: -len(TEMP_SUFFIX)] in declared_names:
            reason = "leftover of an interrupted swap (dropped by the next swap of its index)"
        else:
            reason = "not declared in the catalog: reported, never touched"
        states.append(IndexState(name, table, "unknown", actual=_tail(definition), size_bytes=size,
                                 reason=reason + ("" if valid else "; INVALID")))
    return states


_KEY_LIST = re.compile(r"^\s*(?:USING\s+btree\s*)?\((?P<columns>[^()]*)\)\s*(?:WHERE\s+(?P<where>.+))?$", re.IGNORECASE | re.DOTALL)


def _duplicate_groups(conn: psycopg.Connection, declared: DeclaredIndex, schema: str) -> int:
    """How many key values a declared unique index would find twice (rows with a NULL key column
    never conflict); 0 when its key is not a plain column list (the build itself then decides)."""
    match = _KEY_LIST.match(_STMT.match(declared.statement).group("rest"))
    columns = [c.strip() for c in match.group("columns").split(",")] if match else []
    if not columns or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in columns):
        return 0
    conditions = [sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in columns]
    if match.group("where"):
        conditions.append(sql.SQL("({})").format(sql.SQL(match.group("where"))))  # the catalog's own predicate
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}.{} WHERE {} GROUP BY {} HAVING count(*) > 1) d").format(
        sql.Identifier(schema), sql.Identifier(declared.table), sql.SQL(" AND ").join(conditions),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    count = conn.execute(query).fetchone()[0]
    if not conn.autocommit:
        conn.rollback()
    return int(count)


def make_plan(states: list[IndexState], catalog: list[DeclaredIndex]) -> list[PlanItem]:
    by_name = {d.name: d for d in catalog}
    action_for = {"missing": "build", "invalid": "rebuild", "drifted": "swap", "ok": "skip", "unknown": "leave",
                  "blocked": "blocked"}
    plan = []
    for state in states:
        declared = by_name.get(state.name)
        action = action_for[state.status]
        statement = declared.statement_for(concurrently=True) if declared and action not in ("skip", "blocked") else None
        plan.append(PlanItem(state.name, state.table, action, state.reason, statement))
    return plan


# -- building ---------------------------------------------------------------------------------
_BLOCKERS = """
SELECT a.pid, a.usename, a.application_name, a.state, left(a.query, 500) AS query,
       round(extract(epoch FROM now() - a.xact_start)::numeric, 1)::float8 AS xact_age_s, l.mode
FROM pg_stat_activity a
LEFT JOIN LATERAL (SELECT string_agg(DISTINCT mode, ', ') AS mode FROM pg_locks WHERE pid = a.pid AND granted) l ON true
WHERE a.pid = ANY(pg_blocking_pids(%s))
"""


class _BlockerWatch:
    """Polls ``pg_blocking_pids`` of the building backend while it works."""

    def __init__(self, connect: Callable[[], psycopg.Connection], backend_pid: int, interval_s: float = 0.05,
                 delay_s: float = 0.1) -> None:
        self._connect = connect
        self._pid = backend_pid
        self._interval = interval_s
        self._delay = delay_s  # a build that finishes sooner cannot have waited long on anyone
        self._stop = threading.Event()
        self.blockers: dict[int, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._run, name=f"blocker-watch-{backend_pid}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            with self._connect() as conn:  # connected while the delay runs: on a busy host a new backend is slow
                if self._stop.wait(self._delay):
                    return
                while not self._stop.wait(self._interval):
                    for row in conn.execute(_BLOCKERS, (self._pid,)).fetchall():
                        pid, user, app, state, query, age, mode = row
                        self.blockers[pid] = {"pid": pid, "user": user, "application": app, "state": state,
                                              "query": query, "xact_age_s": age, "locks": mode}
        except psycopg.Error as exc:  # the watch is best effort; the build decides the outcome
            log.warning("blocker watch stopped: %s", exc)


def _index_status(conn: psycopg.Connection, schema: str, name: str) -> tuple[bool, bool, int] | None:
    row = conn.execute(
        "SELECT i.indisvalid, i.indisready, pg_relation_size(i.indexrelid) FROM pg_index i "
        "WHERE i.indexrelid = to_regclass(%s)", (f"{schema}.{name}",)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _drop_concurrently(conn: psycopg.Connection, schema: str, name: str) -> None:
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))


def _cleanup_invalid(conn: psycopg.Connection, schema: str, names: Iterable[str], result: BuildResult,
                     timeout_s: float) -> None:
    """Drop any INVALID index among ``names`` (what a failed concurrent build leaves).

    ``DROP INDEX CONCURRENTLY`` must wait for the same transactions the build waited for, so
    it gets its own, longer, bound; if even that runs out, the leftover is reported (and the
    next run's plan rebuilds it as ``invalid``).
    """
    for name in names:
        try:
            status = _index_status(conn, schema, name)
            if status is None or (status[0] and status[1]):
                continue
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout_s * 1000)}ms")))
            _drop_concurrently(conn, schema, name)
            result.cleaned_up.append(name)
            log.warning("dropped INVALID leftover %s.%s", schema, name)
        except psycopg.Error as exc:
            result.error = (result.error or "") + f"; INVALID leftover {name} could not be dropped: {exc}"
            log.error("could not drop INVALID leftover %s.%s: %s", schema, name, exc)


def _table_lock(conn: psycopg.Connection, table: str, timeout_s: float) -> None:
    """One build per table at a time, across workers: an advisory lock keyed by the table."""
    deadline = time.monotonic() + timeout_s
    key = f"csl_index_build:{table}"
    while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"another index build on {table} did not finish within {timeout_s:.0f}s")
        time.sleep(0.2)


def build_index(connect: Callable[[], psycopg.Connection], item: PlanItem, declared: DeclaredIndex, *,
                schema: str = "public", lock_timeout_ms: int = 2000, statement_timeout_s: int = 3600,
                max_lock_retries: int = 3, backoff_s: float = 1.0, cleanup_timeout_s: float = 60.0) -> BuildResult:
    """Carry out one plan item (``build``, ``rebuild`` or ``swap``) and verify it.

    ``connect`` returns a new autocommit connection to the primary. Raises
    ``IndexBuildError`` (after cleaning up) when the build cannot be done.
    """
    with connect() as conn:
        return _build_on(conn, connect, item, declared, schema=schema, lock_timeout_ms=lock_timeout_ms,
                         statement_timeout_s=statement_timeout_s, max_lock_retries=max_lock_retries,
                         backoff_s=backoff_s, cleanup_timeout_s=cleanup_timeout_s)


def _build_on(conn: psycopg.Connection, connect: Callable[[], psycopg.Connection], item: PlanItem,
              declared: DeclaredIndex, *, schema: str, lock_timeout_ms: int, statement_timeout_s: int,
              max_lock_retries: int, backoff_s: float, cleanup_timeout_s: float) -> BuildResult:
    """``build_index`` on a given autocommit connection (``connect`` serves the blocker watch)."""
    result = BuildResult(item.name, item.table, item.action)
    if item.action not in BUILD_ACTIONS:
        result.status = "success"
        return result
    started = time.perf_counter()
    temp = item.name + TEMP_SUFFIX
    conn.execute("SET application_name = 'csl-index-build'")
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{int(statement_timeout_s)}s")))
    _table_lock(conn, item.table, statement_timeout_s)
    try:
        finished = item.action == "build" and _resume_build(conn, item, declared, schema, result)
        while not finished:
            result.attempts += 1
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms")))
            try:
                with _BlockerWatch(connect, conn.info.backend_pid) as watch:
                    try:
                        _run_action(conn, item, declared, schema, temp)
                    finally:
                        for blocker in watch.blockers.values():
                            if blocker not in result.blockers:
                                result.blockers.append(blocker)
            except psycopg.errors.LockNotAvailable as exc:
                _cleanup_invalid(conn, schema, [temp if item.action == "swap" else item.name], result,
                                 cleanup_timeout_s)
                if result.attempts > max_lock_retries:
                    result.error = (f"lock_timeout ({lock_timeout_ms} ms) hit {result.attempts} times; "
                                    f"blocked by {_describe(result.blockers)}: {str(exc).splitlines()[0]}")
                    raise
                delay = backoff_s * (2 ** (result.attempts - 1))
                log.warning("%s: lock timeout (attempt %d), blocked by %s; retrying in %.1fs",
                            item.name, result.attempts, _describe(result.blockers), delay)
                time.sleep(delay)
                continue
            finished = True
        status = _index_status(conn, schema, item.name)
        if status is None or not (status[0] and status[1]):
            raise IndexBuildError(f"{item.name}: not valid after the build", result=result)
        result.valid, result.size_bytes = True, status[2]
        result.status = "success"
    except (psycopg.Error, TimeoutError) as exc:
        result.status = "failed"
        result.error = result.error or f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        _cleanup_invalid(conn, schema, [temp, item.name] if item.action == "swap" else [item.name], result,
                         cleanup_timeout_s)
        raise IndexBuildError(f"{item.name}: {result.error}", result=result) from exc
    finally:
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error as exc:  # a dead connection releases its locks anyway; keep the real error
            log.warning("could not release the table build lock: %s", exc)
    return result


def _resume_build(conn: psycopg.Connection, item: PlanItem, declared: DeclaredIndex, schema: str,
                  result: BuildResult) -> bool:
    """A planned ``build`` whose index exists now: an earlier try of this very task got that far
    (its worker died, Airflow retries it). As declared and valid: nothing left to build (True).
    INVALID (the try was cut off mid-build): dropped, then built again (False). Anything else is
    left to the build, which then fails on the name, as before."""
    if _index_status(conn, schema, item.name) is None:  # the usual case: no lock on the table taken
        return False
    state = diff(conn, [declared], schema=schema)[0]
    if state.status == "ok":
        log.info("%s: already built as declared (an earlier try of this build finished it)", item.name)
        return True
    if state.status == "invalid":
        _drop_concurrently(conn, schema, item.name)
        result.cleaned_up.append(item.name)
        log.warning("%s: dropped the INVALID index an interrupted try left; building again", item.name)
    return False


def _run_action(conn: psycopg.Connection, item: PlanItem, declared: DeclaredIndex, schema: str, temp: str) -> None:
    qualified_table = f"{schema}.{item.table}"
    if item.action == "build":
        conn.execute(declared.statement_for(table=qualified_table, concurrently=True))
    elif item.action == "rebuild":
        _drop_concurrently(conn, schema, item.name)
        conn.execute(declared.statement_for(table=qualified_table, concurrently=True))
    else:  # swap: the new definition under a temporary name first, so the table never lacks the index
        # resumable: a retry after a lock timeout keeps a valid temporary index and never drops
        # the only valid copy
        status = _index_status(conn, schema, temp)
        if status is None or not (status[0] and status[1]):
            _drop_concurrently(conn, schema, temp)
            conn.execute(declared.statement_for(name=temp, table=qualified_table, concurrently=True))
            status = _index_status(conn, schema, temp)
        if status is None or not status[0]:
            raise psycopg.errors.ObjectNotInPrerequisiteState(f"{temp} is not valid after its build")
        _drop_concurrently(conn, schema, item.name)
        conn.execute(sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
            sql.Identifier(schema), sql.Identifier(temp), sql.Identifier(item.name)))


def _describe(blockers: list[dict[str, Any]]) -> str:
    if not blockers:
        return "no session seen holding a conflicting lock"
    return "; ".join(f"pid {b['pid']} ({b['state']}, {b['locks'] or 'no lock listed'}, xact {b['xact_age_s']}s): "
                     f"{b['query']!r}" for b in blockers)


_RECORD = """
INSERT INTO csl_ops.index_builds
    (run_id, index_name, table_name, action, status, attempts, duration_ms, size_bytes, statement, error,
     blockers, cleaned_up)
VALUES (%(run_id)s, %(name)s, %(table)s, %(action)s, %(status)s, %(attempts)s, %(duration_ms)s, %(size_bytes)s,
        %(statement)s, %(error)s, %(blockers)s, %(cleaned_up)s)
ON CONFLICT (run_id, index_name) DO UPDATE
SET status = excluded.status, attempts = excluded.attempts, duration_ms = excluded.duration_ms,
    size_bytes = excluded.size_bytes, error = excluded.error, blockers = excluded.blockers,
    cleaned_up = excluded.cleaned_up, finished_at = now()
"""


def record_build(conn: psycopg.Connection, run_id: str, result: BuildResult, statement: str | None) -> None:
    """Keep the build's outcome in ``csl_ops.index_builds`` (a retry updates its row)."""
    import json

    values = {**result.as_dict(), "run_id": run_id, "statement": statement,
              "blockers": json.dumps(result.blockers, default=str)}
    with conn.transaction():
        conn.execute(_RECORD, values)


def plan_summary(plan: list[PlanItem]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for item in plan:
        counts[item.action] = counts.get(item.action, 0) + 1
    return {"counts": counts, "to_build": [i.name for i in plan if i.action in BUILD_ACTIONS],
            "unknown": [i.name for i in plan if i.action == "leave"],
            "blocked": [{"name": i.name, "reason": i.reason} for i in plan if i.action == "blocked"]}


def format_plan(plan: list[PlanItem]) -> str:
    lines = [f"{'action':<8} {'index':<45} {'table':<16} reason"]
    for item in plan:
        lines.append(f"{item.action:<8} {item.name:<45} {item.table:<16} {item.reason}")
    counts = plan_summary(plan)["counts"]
    lines.append("plan: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    return "\n".join(lines)


def apply(connect: Callable[[], psycopg.Connection], plan: list[PlanItem], catalog: list[DeclaredIndex], *,
          run_id: str, schema: str = "public", **build_options: Any) -> list[BuildResult]:
    """Build every actionable plan item in order, recording each; failures do not stop the rest."""
    by_name = {d.name: d for d in catalog}
    options = {"lock_timeout_ms": 2000, "statement_timeout_s": 3600, "max_lock_retries": 3, "backoff_s": 1.0,
               "cleanup_timeout_s": 60.0, **build_options}
    results = []
    with connect() as record_conn, connect() as build_conn:
        for item in plan:
            if item.action not in BUILD_ACTIONS:
                continue
            try:
                result = _build_on(build_conn, connect, item, by_name[item.name], schema=schema, **options)
            except IndexBuildError as exc:
                result = exc.result
                log.error("%s", exc)
            record_build(record_conn, run_id, result, item.statement)
            results.append(result)
    return results


# -- one entry point per step, shared by ``python -m csl indexes`` and the DAG's tasks --------------

@dataclass(frozen=True)
class IndexPlan:
    """The diff of the chosen declared indexes against the database, as plan items."""

    items: list[PlanItem]
    catalog: list[DeclaredIndex]

    @property
    def summary(self) -> dict[str, Any]:
        return plan_summary(self.items)

    @property
    def to_build(self) -> list[PlanItem]:
        return [item for item in self.items if item.action in BUILD_ACTIONS]

    def format(self) -> str:
        return format_plan(self.items)

    def as_dict(self) -> dict[str, Any]:
        return {"plan": [vars(item) for item in self.items], "summary": self.summary}


def plan_indexes(conn: psycopg.Connection, only: Iterable[str] | None = None, *, schema: str = "public") -> IndexPlan:
    """Load the catalog, keep ``only`` (unknown names: ``CatalogError`` before anything else) and
    diff it against ``pg_catalog``."""
    full = load_catalog()
    chosen = select(full, list(only or ()))
    return IndexPlan(make_plan(diff(conn, chosen, schema=schema, full_catalog=full), chosen), chosen)


def build_planned(connect: Callable[[], psycopg.Connection], item: PlanItem | dict[str, Any], *, run_id: str,
                  schema: str = "public", **build_options: Any) -> BuildResult:
    """Build one plan item (a task of the DAG) and record it in ``csl_ops.index_builds``, also when
    it fails: then ``IndexBuildError`` is raised after the record, its ``result`` attached."""
    item = item if isinstance(item, PlanItem) else PlanItem(**item)
    declared = {d.name: d for d in load_catalog()}.get(item.name)
    if declared is None:
        raise CatalogError(f"{item.name!r} is not in the index catalog")
    error = None
    try:
        result = build_index(connect, item, declared, schema=schema, **build_options)
    except IndexBuildError as exc:
        result, error = exc.result, exc
    with connect() as conn:
        record_build(conn, run_id, result, item.statement)
    if error is not None:
        raise error
    return result


def format_results(results: list[BuildResult]) -> str:
    if not results:
        return "nothing to build: every declared index is valid and as declared"
    return "\n".join(f"{r.status:<8} {r.action:<8} {r.name:<45} {r.duration_ms} ms"
                     + (f", {r.size_bytes:,} bytes" if r.size_bytes else "") + (f"  {r.error}" if r.error else "")
                     for r in results)


class IndexRunFailed(ProblemFound):
    """Some planned builds failed or never ran (the run report names them)."""


@dataclass(frozen=True)
class IndexRunReport:
    """What a run built, what failed, what never ran, what was left alone or blocked."""

    plan: dict[str, int]
    built: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    not_run: list[str]
    unknown: list[str]
    blocked: list[dict[str, Any]]
    total_build_ms: int

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise IndexRunFailed(
                "index builds failed: " + "; ".join(f"{b['name']}: {b['error']}" for b in self.failed)
                + (f"; never ran: {', '.join(self.not_run)}" if self.not_run else ""))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_run(summary: dict[str, Any], builds: Iterable[BuildResult | dict[str, Any] | None], *,
               dry_run: bool) -> IndexRunReport:
    """The run's report from its plan summary (:func:`plan_summary`) and the builds that reported
    (a build that never ran is ``not_run``, except on a dry run, which builds nothing)."""
    done = [b.as_dict() if isinstance(b, BuildResult) else b for b in builds if b]
    failed = [b for b in done if b["status"] != "success"]
    missing = sorted(set(summary["to_build"]) - {b["name"] for b in done})
    return IndexRunReport(
        plan=summary["counts"],
        built=[{k: b[k] for k in ("name", "action", "duration_ms", "size_bytes", "attempts")} for b in done
               if b["status"] == "success"],
        failed=[{k: b[k] for k in ("name", "action", "error", "blockers", "cleaned_up")} for b in failed],
        not_run=[] if dry_run else missing,
        unknown=summary["unknown"],
        blocked=summary.get("blocked", []),  # e.g. a unique index while duplicates exist: never attempted
        total_build_ms=sum(b["duration_ms"] for b in done))
