"""Nightly VACUUM / ANALYZE chosen by evidence, never blocking traffic.

The platform ran ``VACUUM ANALYZE`` on the whole database. Here each table is judged the way
autovacuum judges it — ``threshold + scale_factor × reltuples``, honouring per-table
reloptions — with stricter factors when asked, and the reason is kept:

1. ``wraparound`` — ``age(relfrozenxid)`` (or ``mxid_age``) past the table's freeze-table age,
   or past a fraction of ``autovacuum_freeze_max_age``: ``VACUUM (FREEZE, ANALYZE)`` first;
2. ``dead_tuples`` — dead tuples over the vacuum threshold: ``VACUUM (ANALYZE)``;
3. ``stale_statistics`` — rows modified since the last analyze over the analyze threshold,
   or never analyzed: ``ANALYZE`` only;
4. ``insert_only`` — rows inserted since the last vacuum over the insert threshold:
   ``VACUUM (ANALYZE)`` so the visibility map lets index-only scans skip the heap.

Tables autovacuum handled recently are skipped with that reason (except wraparound), unless
autovacuum is off for them (it would not come back to them). Every
action runs outside a transaction with ``SKIP_LOCKED``, a ``lock_timeout`` and a
``statement_timeout``: a locked table is skipped and reported, never waited on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from csl.errors import BadInput, ProblemFound
from csl.sqlfiles import load

__all__ = [
    "MODES",
    "ActionResult",
    "Budget",
    "Candidate",
    "MaintenanceActionFailed",
    "MaintenanceError",
    "MaintenancePlan",
    "MaintenanceRunFailed",
    "NightReport",
    "Policy",
    "TableEvidence",
    "act",
    "carry_out",
    "choose",
    "format_plan",
    "gather",
    "plan_maintenance",
    "raise_for_failure",
    "record_action",
    "report_night",
    "run",
    "settings",
    "summarise",
]

log = logging.getLogger("csl.maintenance.vacuum")

MODES = ("auto", "analyze", "vacuum", "freeze")
REASON_ORDER = {"wraparound": 0, "dead_tuples": 1, "stale_statistics": 2, "insert_only": 3, "requested": 4}


class MaintenanceError(BadInput):
    """A request the maintenance pipeline refuses (unknown table, bad mode or factor)."""


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How strict tonight's run is. Factors only ever tighten autovacuum's, never loosen them."""

    mode: str = "auto"
    dead_ratio: float = 0.1  # vacuum when dead tuples > threshold + min(autovacuum factor, this) × reltuples
    analyze_ratio: float = 0.05
    insert_ratio: float = 0.2
    freeze_fraction: float = 0.5  # act on wraparound once age ≥ this × autovacuum_freeze_max_age
    recent_autovacuum_minutes: float = 60.0
    max_tables: int = 50
    tables: tuple[str, ...] = ()  # "schema.table" or "table"; empty = every user table

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MaintenanceError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("dead_ratio", "analyze_ratio", "insert_ratio", "freeze_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise MaintenanceError(f"{name}: expected a number in (0, 1], got {value!r}")
        if self.max_tables < 1:
            raise MaintenanceError(f"max_tables: expected at least 1, got {self.max_tables}")


@dataclass
class TableEvidence:
    relid: int
    schema: str
    table: str
    n_live_tup: int
    n_dead_tup: int
    n_mod_since_analyze: int
    n_ins_since_vacuum: int
    reltuples: float
    total_bytes: int
    xid_age: int
    mxid_age: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    reloptions: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def figures(self) -> dict[str, Any]:
        """What before/after compares."""
        return {"n_dead_tup": self.n_dead_tup, "n_live_tup": self.n_live_tup, "total_bytes": self.total_bytes,
                "xid_age": self.xid_age, "mxid_age": self.mxid_age,
                "n_mod_since_analyze": self.n_mod_since_analyze, "n_ins_since_vacuum": self.n_ins_since_vacuum,
                "last_vacuum": _iso(self.last_vacuum), "last_analyze": _iso(self.last_analyze)}


@dataclass
class Candidate:
    schema: str
    table: str
    reason: str
    action: str  # vacuum | vacuum_freeze | analyze
    detail: str
    priority: float  # higher first within a reason
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class ActionResult:
    schema: str
    table: str
    reason: str
    action: str
    status: str  # done | skipped_locked | skipped_budget | failed | dry_run
    duration_ms: int = 0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- evidence ---------------------------------------------------------------------------------
def settings(conn: psycopg.Connection) -> dict[str, float]:
    return {name: value for name, value in conn.execute(load("maintenance/autovacuum_settings.sql")).fetchall()}


def gather(conn: psycopg.Connection) -> list[TableEvidence]:
    """Evidence for every user table (fresh statistics snapshot)."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '2s'")  # catalog reads only; never queue behind a lock
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(load("maintenance/table_evidence.sql")).fetchall()
    evidence = []
    for row in rows:
        (relid, schema, table, live, dead, mod, ins, reltuples, _never, total, xid_age, mxid_age,
         last_vacuum, last_autovacuum, last_analyze, last_autoanalyze, _vacuums, _analyzes, reloptions) = row
        evidence.append(TableEvidence(relid, schema, table, live, dead, mod, ins, reltuples, total, xid_age, mxid_age,
                                      last_vacuum, last_autovacuum, last_analyze, last_autoanalyze, reloptions or {}))
    return evidence


def _option(table: TableEvidence, server: dict[str, float], name: str, server_name: str | None = None) -> float:
    """A per-table reloption when set, else the server setting (autovacuum's own rule)."""
    if name in table.reloptions:
        return float(table.reloptions[name])
    return server[server_name or name]


def choose(evidence: list[TableEvidence], server: dict[str, float], policy: Policy, *,
           now: datetime | None = None) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """Candidates in priority order (capped at ``max_tables``) and the tables skipped, with why."""
    now = now or datetime.now(UTC)
    wanted = _resolve_tables(evidence, policy.tables)
    chosen: list[Candidate] = []
    skipped: list[dict[str, Any]] = []
    for table in evidence:
        if wanted is not None and table.qualified not in wanted:
            continue
        candidate = _judge(table, server, policy, now)
        if candidate is None and wanted is not None and policy.mode != "auto":
            candidate = Candidate(table.schema, table.table, "requested", "analyze",
                                  f"named in tables with mode={policy.mode}", 0.0)
        if candidate is None:
            continue
        candidate.action = _action_for(candidate, policy.mode)
        candidate.evidence = table.figures()
        last_auto = table.last_autoanalyze if candidate.action == "analyze" else table.last_autovacuum
        recent = last_auto is not None and now - last_auto < timedelta(minutes=policy.recent_autovacuum_minutes)
        # skipping leaves the table to autovacuum: only when autovacuum will come back to it
        if recent and candidate.reason not in ("wraparound", "requested") and _autovacuum_on(table, server):
            minutes = (now - last_auto).total_seconds() / 60
            verb = "analyzed" if candidate.action == "analyze" else "vacuumed"
            skipped.append({"table": table.qualified, "reason": f"autovacuum {verb} it {minutes:.0f} min ago",
                            "would_have_been": candidate.reason})
            continue
        chosen.append(candidate)
    chosen.sort(key=lambda c: (REASON_ORDER[c.reason], -c.priority, c.qualified))
    for extra in chosen[policy.max_tables:]:
        skipped.append({"table": extra.qualified, "reason": f"over max_tables={policy.max_tables}",
                        "would_have_been": extra.reason})
    return chosen[: policy.max_tables], skipped


def _autovacuum_on(table: TableEvidence, server: dict[str, float]) -> bool:
    enabled = table.reloptions.get("autovacuum_enabled", "true").strip().lower()
    return bool(server.get("autovacuum", 1)) and enabled not in ("false", "off", "0", "no")


def _resolve_tables(evidence: list[TableEvidence], names: Iterable[str]) -> set[str] | None:
    names = list(names)
    if not names:
        return None
    by_qualified = {t.qualified for t in evidence}
    by_name: dict[str, list[str]] = {}
    for t in evidence:
        by_name.setdefault(t.table, []).append(t.qualified)
    resolved, unknown = set(), []
    for name in names:
        if name in by_qualified:
            resolved.add(name)
        elif len(by_name.get(name, [])) == 1:
            resolved.add(by_name[name][0])
        elif name in by_name:
            raise MaintenanceError(f"table {name!r} exists in several schemas ({', '.join(by_name[name])}); qualify it")
        else:
            unknown.append(name)
    if unknown:
        raise MaintenanceError(f"no such user table: {', '.join(unknown)}")
    return resolved


def _judge(table: TableEvidence, server: dict[str, float], policy: Policy, now: datetime) -> Candidate | None:
    reltuples = max(table.reltuples, float(table.n_live_tup))
    freeze_max = min(_option(table, server, "autovacuum_freeze_max_age"), server["autovacuum_freeze_max_age"])
    freeze_table = min(_option(table, server, "autovacuum_freeze_table_age", "vacuum_freeze_table_age"),
                       0.95 * freeze_max)
    mxid_max = min(_option(table, server, "autovacuum_multixact_freeze_max_age"),
                   server["autovacuum_multixact_freeze_max_age"])
    mxid_table = min(_option(table, server, "autovacuum_multixact_freeze_table_age",
                             "vacuum_multixact_freeze_table_age"), 0.95 * mxid_max)
    xid_limit = min(freeze_table, policy.freeze_fraction * freeze_max)
    mxid_limit = min(mxid_table, policy.freeze_fraction * mxid_max)
    if table.xid_age >= xid_limit or table.mxid_age >= mxid_limit:
        ratio = max(table.xid_age / max(freeze_max, 1), table.mxid_age / max(mxid_max, 1))
        return Candidate(table.schema, table.table, "wraparound", "vacuum_freeze",
                         f"age(relfrozenxid)={table.xid_age:,} (act at {xid_limit:,.0f}; autovacuum forces at "
                         f"{freeze_max:,.0f}), mxid_age={table.mxid_age:,}", ratio)

    vac_factor = min(_option(table, server, "autovacuum_vacuum_scale_factor"), policy.dead_ratio)
    vac_threshold = _option(table, server, "autovacuum_vacuum_threshold") + vac_factor * reltuples
    if table.n_dead_tup > vac_threshold:
        return Candidate(table.schema, table.table, "dead_tuples", "vacuum",
                         f"{table.n_dead_tup:,} dead tuples > {vac_threshold:,.0f} "
                         f"(threshold + {vac_factor:g} × {reltuples:,.0f} rows)",
                         table.n_dead_tup / max(reltuples, 1.0))

    never_analyzed = table.last_analyze is None and table.last_autoanalyze is None
    anl_factor = min(_option(table, server, "autovacuum_analyze_scale_factor"), policy.analyze_ratio)
    anl_threshold = _option(table, server, "autovacuum_analyze_threshold") + anl_factor * reltuples
    if (never_analyzed and table.n_live_tup > 0) or table.n_mod_since_analyze > anl_threshold:
        detail = ("never analyzed" if never_analyzed else
                  f"{table.n_mod_since_analyze:,} rows changed since the last analyze > {anl_threshold:,.0f}")
        return Candidate(table.schema, table.table, "stale_statistics", "analyze", detail,
                         table.n_mod_since_analyze / max(reltuples, 1.0))

    ins_factor = min(_option(table, server, "autovacuum_vacuum_insert_scale_factor"), policy.insert_ratio)
    ins_base = _option(table, server, "autovacuum_vacuum_insert_threshold")
    ins_threshold = ins_base + ins_factor * reltuples
    if ins_base >= 0 and table.n_ins_since_vacuum > ins_threshold:
        return Candidate(table.schema, table.table, "insert_only", "vacuum",
                         f"{table.n_ins_since_vacuum:,} rows inserted since the last vacuum > {ins_threshold:,.0f} "
                         "(visibility map behind: index-only scans read the heap)",
                         table.n_ins_since_vacuum / max(reltuples, 1.0))
    return None


def _action_for(candidate: Candidate, mode: str) -> str:
    if mode == "analyze":
        return "analyze"
    if mode == "freeze" or candidate.reason == "wraparound":
        return "vacuum_freeze"
    if mode == "vacuum":
        return "vacuum"
    return "analyze" if candidate.reason in ("stale_statistics", "requested") else "vacuum"


# -- acting -----------------------------------------------------------------------------------
_STATEMENTS = {
    "vacuum": "VACUUM (ANALYZE, SKIP_LOCKED) {}",
    "vacuum_freeze": "VACUUM (FREEZE, ANALYZE, SKIP_LOCKED) {}",
    "analyze": "ANALYZE (SKIP_LOCKED) {}",
}


def statement(candidate: Candidate) -> sql.Composed:
    return sql.SQL(_STATEMENTS[candidate.action]).format(sql.Identifier(candidate.schema, candidate.table))


def _table_figures(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    for item in gather(conn):
        if item.schema == schema and item.table == table:
            return item.figures()
    return {}


def act(connect: Callable[[], psycopg.Connection], candidate: Candidate, *, statement_timeout_s: int = 3600,
        lock_timeout_ms: int = 1000, dry_run: bool = False) -> ActionResult:
    """Run one action outside a transaction; a table someone holds a lock on is skipped."""
    result = ActionResult(candidate.schema, candidate.table, candidate.reason, candidate.action, "dry_run")
    with connect() as conn:
        result.before = _table_figures(conn, candidate.schema, candidate.table)
        if dry_run:
            return result
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{int(statement_timeout_s)}s")))
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms")))
        conn.execute("SET application_name = 'csl-maintenance'")
        started = time.perf_counter()
        try:
            conn.execute(statement(candidate))
            skipped = [n for n in notices if n.startswith("skipping")]
            result.status = "skipped_locked" if skipped else "done"
            if skipped:
                result.error = skipped[0]
        except psycopg.errors.LockNotAvailable as exc:
            result.status, result.error = "skipped_locked", str(exc).splitlines()[0]
        except psycopg.Error as exc:
            result.status, result.error = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        time.sleep(0.1)  # statistics of the action reach the shared stats right after it ends
        result.after = _table_figures(conn, candidate.schema, candidate.table)
    log.info("%s %s (%s): %s in %d ms, dead tuples %s → %s", candidate.action, candidate.qualified,
             candidate.reason, result.status, result.duration_ms, result.before.get("n_dead_tup"),
             result.after.get("n_dead_tup"))
    return result


_RECORD = """
INSERT INTO csl_ops.maintenance_actions
    (run_id, schema_name, table_name, reason, action, status, evidence, before, after, duration_ms, error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id, schema_name, table_name) DO UPDATE
SET reason = excluded.reason, action = excluded.action, status = excluded.status, evidence = excluded.evidence,
    before = excluded.before, after = excluded.after, duration_ms = excluded.duration_ms, error = excluded.error,
    finished_at = now()
"""


def record_action(conn: psycopg.Connection, run_id: str, candidate: Candidate, result: ActionResult) -> None:
    import json

    with conn.transaction():
        conn.execute(_RECORD, (run_id, result.schema, result.table, result.reason, result.action, result.status,
                               json.dumps({"detail": candidate.detail, **candidate.evidence}, default=str),
                               json.dumps(result.before, default=str), json.dumps(result.after, default=str),
                               result.duration_ms, result.error))


def format_plan(chosen: list[Candidate], skipped: list[dict[str, Any]]) -> str:
    lines = [f"{'action':<14} {'table':<36} {'reason':<17} evidence"]
    for c in chosen:
        lines.append(f"{c.action:<14} {c.qualified:<36} {c.reason:<17} {c.detail}")
    for s in skipped:
        lines.append(f"{'skip':<14} {s['table']:<36} {s['would_have_been']:<17} {s['reason']}")
    if not chosen:
        lines.append("nothing to do: no table needs VACUUM or ANALYZE by tonight's policy")
    return "\n".join(lines)


def wait_for_cleanup_horizon(conn: psycopg.Connection, *, timeout_s: float = 30.0) -> None:
    """Wait until no standby's hot_standby_feedback holds back rows deleted so far.

    A standby reports its xmin every ``wal_receiver_status_interval``; until it passes the
    transactions that made tuples dead, VACUUM on the primary must keep them ("not yet
    removable"). ``conn`` is an autocommit connection to the primary.
    """
    mark = conn.execute("SELECT txid_current() % 4294967296").fetchone()[0]
    deadline = time.monotonic() + timeout_s
    while True:
        conn.execute("SELECT txid_current()")  # keep xids moving so the feedback advances
        held = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE backend_xmin IS NOT NULL "
                            "AND age(backend_xmin) > age(%s::text::xid)", (str(mark),)).fetchone()[0]
        if not held:
            return
        if time.monotonic() > deadline:
            raise MaintenanceError(f"a standby's feedback xmin did not pass our transactions within {timeout_s:g}s")
        time.sleep(0.2)


def candidate_from_dict(data: dict[str, Any]) -> Candidate:
    return Candidate(**data)


@dataclass(frozen=True)
class Budget:
    """A night's time budget: no action starts once ``max_duration_s`` have passed since
    ``started_at`` (seconds since the epoch: the plan and each action may run in other
    processes, as the DAG's mapped tasks do)."""

    started_at: float
    max_duration_s: float

    def spent(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.started_at > self.max_duration_s


@dataclass(frozen=True)
class MaintenancePlan:
    """Tonight's candidates (most urgent first), the tables skipped and why, when it was made."""

    chosen: list[Candidate]
    skipped: list[dict[str, Any]]
    started_at: float

    def format(self) -> str:
        return format_plan(self.chosen, self.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": [asdict(c) for c in self.chosen], "skipped": self.skipped, "started_at": self.started_at}


def plan_maintenance(conn: psycopg.Connection, policy: Policy) -> MaintenancePlan:
    """Gather every table's evidence and choose by ``policy``."""
    chosen, skipped = choose(gather(conn), settings(conn), policy)
    return MaintenancePlan(chosen, skipped, started_at=time.time())


class MaintenanceActionFailed(ProblemFound):
    """A VACUUM or ANALYZE failed (not a locked table: that is skipped)."""


def carry_out(connect: Callable[[], psycopg.Connection], candidate: Candidate, *, run_id: str, budget: Budget,
              statement_timeout_s: int = 3600, lock_timeout_ms: int = 1000, dry_run: bool = False) -> ActionResult:
    """One chosen action, unless the budget is spent before it starts, recorded in
    ``csl_ops.maintenance_actions`` (not on a dry run)."""
    if budget.spent():
        result = ActionResult(candidate.schema, candidate.table, candidate.reason, candidate.action, "skipped_budget",
                              error=f"max_duration_s={budget.max_duration_s:g} spent before it started")
    else:
        result = act(connect, candidate, statement_timeout_s=statement_timeout_s, lock_timeout_ms=lock_timeout_ms,
                     dry_run=dry_run)
    if not dry_run:
        with connect() as conn:
            record_action(conn, run_id, candidate, result)
    return result


def raise_for_failure(candidate: Candidate, result: ActionResult) -> None:
    if result.status == "failed":
        raise MaintenanceActionFailed(f"{candidate.action} {candidate.qualified} failed: {result.error}")


def run(connect: Callable[[], psycopg.Connection], policy: Policy, *, run_id: str, dry_run: bool = False,
        max_duration_s: float = 3600.0, statement_timeout_s: int = 3600, lock_timeout_ms: int = 1000,
        workers: int = 1) -> dict[str, Any]:
    """Plan and act without Airflow (``python -m csl maintenance run``).

    ``workers`` actions run at once, most urgent first (as the DAG's ``csl_maintenance`` pool
    does); no action starts after ``max_duration_s``.
    """
    from concurrent.futures import ThreadPoolExecutor

    with connect() as conn:
        plan = plan_maintenance(conn, policy)
    budget = Budget(plan.started_at, max_duration_s)

    def one(candidate: Candidate) -> ActionResult:
        return carry_out(connect, candidate, run_id=run_id, budget=budget, statement_timeout_s=statement_timeout_s,
                         lock_timeout_ms=lock_timeout_ms, dry_run=dry_run)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, plan.chosen))
    return {"chosen": [asdict(c) for c in plan.chosen], "skipped": plan.skipped,
            "results": [r.as_dict() for r in results], "summary": summarise(results)}


class MaintenanceRunFailed(ProblemFound):
    """Some chosen actions failed or never ran."""


@dataclass(frozen=True)
class NightReport:
    """Before/after summary of a night's maintenance (the DAG's report task)."""

    chosen: int
    skipped_by_policy: list[dict[str, Any]]
    dry_run: bool
    summary: dict[str, Any]
    never_ran: int

    @property
    def failed(self) -> int:
        return self.summary["by_status"].get("failed", 0) + self.never_ran

    def raise_for_failures(self) -> None:
        if self.failed:
            raise MaintenanceRunFailed(f"{self.failed} maintenance action(s) failed or never ran: "
                                       f"{self.summary['tables']}")

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "skipped_by_policy": self.skipped_by_policy, "dry_run": self.dry_run,
                **self.summary}


def report_night(plan: MaintenancePlan | dict[str, Any], actions: Iterable[ActionResult | dict[str, Any] | None], *,
                 dry_run: bool) -> NightReport:
    """The night's report from its plan and the actions that reported (on a real run a chosen
    table without an action never ran, and counts as failed)."""
    plan = plan.as_dict() if isinstance(plan, MaintenancePlan) else plan
    done = [a for a in actions if a]
    return NightReport(chosen=len(plan["chosen"]), skipped_by_policy=plan["skipped"], dry_run=dry_run,
                       summary=summarise(done), never_ran=0 if dry_run else max(len(plan["chosen"]) - len(done), 0))


def summarise(results: Iterable[ActionResult | dict[str, Any]]) -> dict[str, Any]:
    rows = [r.as_dict() if isinstance(r, ActionResult) else r for r in results]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    done = [r for r in rows if r["status"] == "done"]
    return {
        "by_status": by_status,
        "dead_tuples_removed": sum(max(0, (r["before"].get("n_dead_tup") or 0) - (r["after"].get("n_dead_tup") or 0))
                                   for r in done),
        "bytes_before": sum(r["before"].get("total_bytes") or 0 for r in done),
        "bytes_after": sum(r["after"].get("total_bytes") or 0 for r in done),
        "duration_ms": sum(r["duration_ms"] for r in rows),
        "tables": [f"{r['schema']}.{r['table']}: {r['action']} {r['status']}" for r in rows],
    }
