"""The performance report's analysis: deltas between snapshots over a window, then queries,
regressions, indexes (unused, duplicate, INVALID, HypoPG-verified missing), tables (bloat,
dead tuples, vacuum/analyze staleness, wraparound, sequences, cache hit ratio), sessions,
replicas and what our own pipelines did. Every recommendation carries its evidence (numbers).

Advice that is safe to follow: an index is *unused* only when no scan was seen on the primary
and on every replica over ``unused_index_days`` of statistics (a replica that could not be read
makes it *unknown*, less history makes it *not enough evidence yet*), and an index the declared
catalog owns is never given a ``DROP INDEX`` (remove it from the catalog instead). Texts from the
database are shown without their literals; those that may carry a secret are not shown at all.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from csl.errors import BadInput
from csl.reports import advice as hypo
from csl.reports import sqltext
from csl.reports.snapshot import MARK, ReplicaConnect, Snapshot, capture, get_snapshot
from csl.sqlfiles import load

__all__ = ["ReportParams", "ReportParamsError", "analyse", "choose_baselines", "parse_window"]

log = logging.getLogger("csl.reports")

OWN_QUERIES = MARK  # the report's own capture and analysis statements carry it: not workload
WRAPAROUND_LIMIT = 2_147_483_647


class ReportParamsError(BadInput, ValueError):
    """A report parameter is out of range; the message names it."""


_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)\s*$", re.IGNORECASE)


def parse_window(text: str | float | dt.timedelta) -> dt.timedelta:
    """``"90m"``, ``"24h"``, ``"7d"`` (or hours as a number) → a timedelta of at most 90 days."""
    if isinstance(text, dt.timedelta):
        window = text
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        window = dt.timedelta(hours=float(text))
    else:
        match = _WINDOW.match(str(text))
        if not match:
            raise ReportParamsError(f"window: expected a duration like 90m, 24h or 7d, got {text!r}")
        value, unit = float(match.group(1)), match.group(2).lower()
        window = dt.timedelta(minutes=value) if unit.startswith("m") else (
            dt.timedelta(hours=value) if unit == "h" else dt.timedelta(days=value))
    if not dt.timedelta(seconds=1) <= window <= dt.timedelta(days=90):
        raise ReportParamsError(f"window: expected 1 second to 90 days, got {window}")
    return window


@dataclass(frozen=True, kw_only=True)
class ReportParams:
    """What a report looks at and the thresholds it judges by (validated on creation)."""

    window: dt.timedelta = dt.timedelta(hours=24)
    top: int = 15                      # rows per top-queries table
    regression_pct: float = 50.0       # mean time up by at least this much vs the previous window
    min_calls: int = 20                # calls in *both* windows for a regression to count
    regression_min_ms: float = 0.5     # and the mean must have grown by at least this many ms
    min_cost_drop_pct: float = 50.0    # HypoPG: suggest only when the plan cost drops this much
    advise_queries: int = 10           # HypoPG: the slowest queries (by total time) to cost
    dead_ratio: float = 0.2            # dead / (live + dead) worth a VACUUM recommendation
    min_dead_tuples: int = 1000
    stale_days: float = 7.0            # analyze older than this with changes since = stale
    bloat_pct: float = 30.0            # estimated bloat worth reporting…
    bloat_min_bytes: int = 10 * 1024 * 1024  # …when the wasted space is at least this big
    long_running_s: int = 300
    idle_in_xact_s: int = 60
    replica_lag_s: float = 30.0
    hit_ratio_min: float = 0.95
    sequence_pct: float = 75.0
    unused_index_days: float = 7.0     # statistics (primary and every replica) before an index is "unused"
    advisor_role: str = hypo.ADVISOR_ROLE  # HypoPG plans are made as this role (reads only), never as ours
    exact_bloat_tables: tuple[str, ...] = ()  # pgstattuple_approx on these (schema.table)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", parse_window(self.window))
        checks = [("top", self.top, 1, 500), ("regression_pct", self.regression_pct, 1, 10_000),
                  ("min_calls", self.min_calls, 1, 10**9), ("regression_min_ms", self.regression_min_ms, 0, 10**7),
                  ("min_cost_drop_pct", self.min_cost_drop_pct, 1, 100), ("advise_queries", self.advise_queries, 0, 100),
                  ("dead_ratio", self.dead_ratio, 0.001, 1), ("min_dead_tuples", self.min_dead_tuples, 0, 10**12),
                  ("stale_days", self.stale_days, 0.01, 3650), ("bloat_pct", self.bloat_pct, 1, 100),
                  ("bloat_min_bytes", self.bloat_min_bytes, 0, 10**15), ("long_running_s", self.long_running_s, 1, 10**6),
                  ("idle_in_xact_s", self.idle_in_xact_s, 1, 10**6), ("replica_lag_s", self.replica_lag_s, 0, 10**6),
                  ("hit_ratio_min", self.hit_ratio_min, 0, 1), ("sequence_pct", self.sequence_pct, 1, 100),
                  ("unused_index_days", self.unused_index_days, 0.001, 3650)]
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ReportParamsError(f"{name}: expected a number in {lo}..{hi}, got {value!r}")
        if not isinstance(self.advisor_role, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", self.advisor_role):
            raise ReportParamsError(f"advisor_role: expected a role name, got {self.advisor_role!r}")
        for name in self.exact_bloat_tables:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", name):
                raise ReportParamsError(f"exact_bloat_tables: expected schema.table, got {name!r}")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["window"] = f"{self.window.total_seconds() / 3600:g}h"
        values["exact_bloat_tables"] = list(self.exact_bloat_tables)
        return values


def _rows(conn: psycopg.Connection, name: str, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(MARK + load(f"reports/{name}.sql"), params)
        return cur.fetchall()


def _optional_rows(conn: psycopg.Connection, table: str, name: str, params: Any = None) -> list[dict[str, Any]] | None:
    """Rows of a pipeline query, or None when that pipeline's table does not exist here."""
    if not conn.execute(MARK + "SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
        return None
    try:
        with conn.transaction():
            return _rows(conn, name, params)
    except psycopg.Error as exc:  # another pipeline's schema moved on: report, do not fail the report
        log.warning("pipeline figures from %s unavailable: %s", table, exc)
        return None


def choose_baselines(conn: psycopg.Connection, end: Snapshot, window: dt.timedelta) -> tuple[Snapshot | None, Snapshot | None]:
    """The window's baseline (the earliest snapshot inside it, other than ``end``) and the
    previous window's baseline (the snapshot before it nearest to one window-span earlier, at
    most two spans back). Either may be None."""
    start = end.taken_at - window
    cols = "id, taken_at, pgss_stats_reset, db_stats_reset, capture_ms, rows_written"
    row = conn.execute(MARK + f"SELECT {cols} FROM csl_ops.perf_snapshots WHERE database_name = current_database()"
                       " AND taken_at >= %s AND taken_at < %s AND id <> %s ORDER BY taken_at, id LIMIT 1",
                       (start, end.taken_at, end.id)).fetchone()
    if not row:
        return None, None
    base = Snapshot(*row)
    span = end.taken_at - base.taken_at
    target = base.taken_at - span
    row = conn.execute(MARK + f"SELECT {cols} FROM csl_ops.perf_snapshots WHERE database_name = current_database()"
                       " AND taken_at < %s AND taken_at >= %s ORDER BY abs(extract(epoch FROM taken_at - %s)), id"
                       " LIMIT 1", (base.taken_at, base.taken_at - 2 * span, target)).fetchone()
    return base, (Snapshot(*row) if row else None)


def _statement_deltas(conn, end_id: int, base_id: int | None) -> list[dict[str, Any]]:
    rows = _rows(conn, "statement_deltas", {"end_id": end_id, "base_id": base_id})
    out = []
    for r in rows:
        text = r["query"] or ""
        if r["calls"] <= 0 or OWN_QUERIES in text or '"csl_ops"."perf_' in text:  # ours, or their foreign-key checks
            continue
        if text.strip().upper() in ("BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION"):
            continue  # transaction control: no plan, nothing to tune
        r["mean_ms"] = r["total_ms"] / r["calls"]
        r["io_blks"] = r["shared_blks_read"] + r["temp_blks_read"] + r["temp_blks_written"]
        hits = r["shared_blks_hit"] + r["shared_blks_read"]
        r["hit_ratio"] = round(r["shared_blks_hit"] / hits, 4) if hits else None
        out.append(r)
    return out


def _short(text: str | None, limit: int = 300) -> str:
    return re.sub(r"\s+", " ", text or "").strip()[:limit]


def _shown(query: str | None, limit: int = 300) -> str:
    """A query text as the report shows it: without literals or comments (see csl.reports.sqltext)."""
    return sqltext.redact(query, limit=limit)


def _span(delta: dt.timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}".replace(".0 ", " ")
    return f"{seconds:.0f} s" if seconds >= 1 else "under a second"


def _source(src: str) -> str:
    """A statistics source as a reader says it: "the primary", "the replica" (the one named
    ``replica``, DATABASE_READ_REPLICA_URL), "replica <name>"."""
    return {"primary": "the primary", "replica replica": "the replica"}.get(src, src)


def _query_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"queryid": r["queryid"], "query": _shown(r["query"]), "calls": r["calls"],
            "total_ms": round(r["total_ms"], 2), "mean_ms": round(r["mean_ms"], 3), "rows": r["rows"],
            "shared_blks_hit": r["shared_blks_hit"], "shared_blks_read": r["shared_blks_read"],
            "temp_blks_written": r["temp_blks_written"], "hit_ratio": r["hit_ratio"],
            "blk_read_ms": round(r["blk_read_ms"], 2)}


def _regressions(current: list[dict[str, Any]], previous: list[dict[str, Any]], p: ReportParams) -> list[dict[str, Any]]:
    before = {r["queryid"]: r for r in previous}
    found = []
    for r in current:
        b = before.get(r["queryid"])
        if not b or r["calls"] < p.min_calls or b["calls"] < p.min_calls or b["mean_ms"] <= 0:
            continue
        change = 100.0 * (r["mean_ms"] - b["mean_ms"]) / b["mean_ms"]
        if change >= p.regression_pct and r["mean_ms"] - b["mean_ms"] >= p.regression_min_ms:
            found.append({"queryid": r["queryid"], "query": _shown(r["query"]),
                          "mean_ms_before": round(b["mean_ms"], 3), "mean_ms_now": round(r["mean_ms"], 3),
                          "change_pct": round(change, 1), "calls_before": b["calls"], "calls_now": r["calls"],
                          "extra_ms_total": round((r["mean_ms"] - b["mean_ms"]) * r["calls"], 1)})
    return sorted(found, key=lambda x: -x["extra_ms_total"])


def _protected(i: dict[str, Any]) -> bool:
    return i["is_primary"] or i["is_unique"] or i["backs_constraint"]


def _unused_indexes(catalog: list[dict[str, Any]], evidence: list[dict[str, Any]], *, sources: list[str],
                    unknown: list[str], period: dt.timedelta, end_at: dt.datetime,
                    declared: dict[str, str] | None) -> list[dict[str, Any]]:
    """Valid indexes (not keys) with no scan seen on any of ``sources`` (the primary and every
    replica read at the end snapshot) over the observation ``period``, each with its verdict:
    ``unused`` (observed at least ``period`` everywhere), ``not enough evidence`` (less history
    somewhere) or ``unknown`` (``unknown`` names a replica that could not be read)."""
    seen: dict[int, dict[str, dict[str, Any]]] = {}
    for e in evidence:
        seen.setdefault(e["indexrelid"], {})[e["source"]] = e
    found = []
    for i in catalog:
        if not i["is_valid"] or not i["is_ready"] or _protected(i):
            continue
        per_source = seen.get(i["indexrelid"], {})
        if any(e["last_moved_at"] is not None for e in per_source.values()):
            continue  # scanned within the period on the primary or a replica: used
        observed = {src: end_at - per_source[src]["still_since"] if src in per_source else dt.timedelta(0)
                    for src in sources}
        least = min(observed.values())
        if unknown:
            verdict, why = "unknown", "; ".join(unknown)
        elif least >= period:
            verdict, why = "unused", f"no scan on {' or '.join(map(_source, sources))} for {_span(least)} (≥ {_span(period)})"
        else:
            short = min(observed, key=observed.get)
            verdict = "not enough evidence"
            why = f"not enough evidence yet: observed {_span(least)} on {short} of the {_span(period)} needed"
        primary = per_source.get("primary") or {}
        found.append({"index": f"{i['schema_name']}.{i['index_name']}", "table": f"{i['schema_name']}.{i['table_name']}",
                      "verdict": verdict, "why": why, "observed": _span(least),
                      "observed_days": round(least.total_seconds() / 86400, 3),
                      "scans_since_reset": primary.get("scans_total"),
                      "replica_scans_since_reset": {src: per_source[src]["scans_total"] for src in sources[1:]
                                                    if src in per_source},
                      "in_catalog": None if declared is None else i["index_name"] in declared,
                      "size_bytes": i["size_bytes"], "definition": i["definition"]})
    return found


def _index_findings(catalog: list[dict[str, Any]], declared: dict[str, str] | None):
    """(duplicates, invalid): duplicates are prefix-covered by another index of the same table;
    between two identical ones the one the catalog does not declare (else the newer) is named."""
    duplicates, invalid = [], []
    in_catalog = lambda i: declared is None or i["index_name"] in declared
    for i in catalog:
        if not i["is_valid"] or not i["is_ready"]:
            invalid.append({"index": f"{i['schema_name']}.{i['index_name']}", "table": f"{i['schema_name']}.{i['table_name']}",
                            "definition": i["definition"], "size_bytes": i["size_bytes"]})
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i in catalog:
        if i["is_valid"] and i["is_ready"] and not i["expressions"]:
            by_table.setdefault((i["schema_name"], i["table_name"]), []).append(i)
    for group in by_table.values():
        for a in group:
            if _protected(a):
                continue  # never suggest dropping what enforces uniqueness or a constraint
            ka = a["key_count"]
            for b in group:
                if a is b or a["method"] != b["method"] or a["predicate"] != b["predicate"]:
                    continue
                kb = b["key_count"]
                same_prefix = (ka <= kb and a["columns"][:ka] == b["columns"][:ka]
                               and a["opclasses"][:ka] == b["opclasses"][:ka]
                               and a["collations"][:ka] == b["collations"][:ka]
                               and a["options"][:ka] == b["options"][:ka])
                if not same_prefix or a["method"] != "btree" and ka != kb:
                    continue
                if ka == kb and not _protected(b) and (in_catalog(a), a["indexrelid"]) < (in_catalog(b), b["indexrelid"]):
                    continue  # two identical plain indexes: name the one outside the catalog, else the newer
                duplicates.append({"index": f"{a['schema_name']}.{a['index_name']}",
                                   "covered_by": f"{b['schema_name']}.{b['index_name']}",
                                   "table": f"{a['schema_name']}.{a['table_name']}", "size_bytes": a["size_bytes"],
                                   "in_catalog": None if declared is None else a["index_name"] in declared,
                                   "definition": a["definition"], "covering_definition": b["definition"]})
                break
    return duplicates, invalid


def _declared_indexes(notes: list[str]) -> dict[str, str] | None:
    """Index name → why, of the declared index catalog (and the names its online swaps build
    under); None when it cannot be read — then no index is given a DROP statement."""
    try:
        from csl.maintenance.indexes import TEMP_SUFFIX, load_catalog

        entries = load_catalog()
    except Exception as exc:  # noqa: BLE001 - whatever stops us reading it, advice must stay safe
        notes.append(f"The index catalog could not be read ({_short(str(exc), 160)}): no index is given a DROP "
                     "statement in this report.")
        return None
    return {**{d.name + TEMP_SUFFIX: d.why for d in entries}, **{d.name: d.why for d in entries}}


def _ratio(hit: int, read: int) -> float | None:
    return round(hit / (hit + read), 4) if hit + read else None


def _age_days(now: dt.datetime, *stamps: Any) -> float | None:
    latest = max((s for s in stamps if s is not None), default=None)
    return round((now - latest).total_seconds() / 86400, 2) if latest else None


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return str(n)


def analyse(conn: psycopg.Connection, params: ReportParams | None = None, *, snapshot_id: int | None = None,
            advise_with_hypopg: bool = True, replicas: Mapping[str, ReplicaConnect] | None = None,
            declared_indexes: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole report as plain data: ``meta``, ``summary``, ``tables`` (name → rows),
    ``charts`` (name → series) and ``recommendations`` (also in ``tables``).

    Takes a fresh snapshot first (so the window ends now, reading ``replicas`` too: see
    :func:`csl.reports.capture`) unless ``snapshot_id`` names the one that ends it. ``conn``: an
    autocommit connection to the primary of the platform database. ``declared_indexes``: index
    name → why of the declared catalog (default: ``csl.maintenance.indexes.load_catalog()``).
    """
    p = params or ReportParams()
    if snapshot_id is None:
        end = capture(conn, replicas=replicas)
    else:
        end = get_snapshot(conn, snapshot_id)
        if end is None:
            raise ReportParamsError(f"snapshot_id: no snapshot {snapshot_id}")
    base, prev = choose_baselines(conn, end, p.window)
    window_start = base.taken_at if base else (end.pgss_stats_reset or end.db_stats_reset)
    notes: list[str] = []
    if base is None:
        since = end.pgss_stats_reset
        notes.append(f"No older snapshot in the {p.as_dict()['window']} window: figures are cumulative since the "
                     f"statistics reset at {since:%Y-%m-%d %H:%M:%S %Z}." if since else
                     f"No older snapshot in the {p.as_dict()['window']} window: figures are cumulative since the "
                     "statistics were last reset.")
    queries = _statement_deltas(conn, end.id, base.id if base else None)
    previous = _statement_deltas(conn, base.id, prev.id) if base and prev else []
    if any(r["counted_from_reset"] for r in queries):
        notes.append("Statistics were reset (or entries deallocated) inside the window: affected queries are "
                     "counted from the reset, never negative.")
    if not prev:
        notes.append("No snapshot for the previous window: regressions need one (snapshots run hourly).")
    if base is not None:
        dealloc = conn.execute(MARK + "SELECT e.pgss_dealloc - b.pgss_dealloc FROM csl_ops.perf_snapshots e,"
                               " csl_ops.perf_snapshots b WHERE e.id = %s AND b.id = %s"
                               " AND e.pgss_stats_reset IS NOT DISTINCT FROM b.pgss_stats_reset",
                               (end.id, base.id)).fetchone()
        if dealloc and dealloc[0]:
            notes.append(f"pg_stat_statements deallocated entries {dealloc[0]:,} times in the window: rare queries "
                         "may be missing (raise pg_stat_statements.max).")
    now = conn.execute(MARK + "SELECT now()").fetchone()[0]
    tables: dict[str, list[dict[str, Any]]] = {}
    recs: list[dict[str, Any]] = []

    def rec(kind: str, severity: str, target: str, message: str, evidence: dict[str, Any],
            statement: str | None = None) -> None:
        recs.append({"kind": kind, "severity": severity, "target": target, "message": message,
                     "evidence": evidence, "statement": statement})

    # -- queries -----------------------------------------------------------------------------
    by = lambda key: sorted(queries, key=lambda r: -r[key])[: p.top]
    tables["top_queries_total_time"] = [_query_row(r) for r in by("total_ms")]
    tables["top_queries_mean_time"] = [_query_row(r) for r in by("mean_ms")]
    tables["top_queries_calls"] = [_query_row(r) for r in by("calls")]
    tables["top_queries_io"] = [_query_row(r) for r in by("io_blks") if r["io_blks"] > 0]
    total_db_ms = sum(r["total_ms"] for r in queries) or 1.0
    for r in tables["top_queries_total_time"]:
        r["share_pct"] = round(100.0 * r["total_ms"] / total_db_ms, 1)
    regressions = _regressions(queries, previous, p)
    tables["regressions"] = regressions
    for r in regressions:
        rec("regression", "high", f"query {r['queryid']}",
            f"mean time {r['mean_ms_before']} ms → {r['mean_ms_now']} ms (+{r['change_pct']}%) over "
            f"{r['calls_now']:,} calls ({r['calls_before']:,} calls before); {r['extra_ms_total']:,.0f} ms extra in the window",
            {k: r[k] for k in ("mean_ms_before", "mean_ms_now", "change_pct", "calls_before", "calls_now")})

    # -- indexes -----------------------------------------------------------------------------
    catalog = _rows(conn, "index_catalog")
    declared = _declared_indexes(notes) if declared_indexes is None else declared_indexes
    period = dt.timedelta(days=p.unused_index_days)
    replicas_read = _rows(conn, "index_sources", {"snapshot_id": end.id})
    standbys = replicas_read[0]["standbys"] if replicas_read else 0
    replicas_read = [r for r in replicas_read if r["replica"] is not None]
    sources = ["primary"] + [f"replica {r['replica']}" for r in replicas_read if r["status"] == "ok"]
    unknown = [f"{_source('replica ' + r['replica'])} could not be read at the snapshot ({r['error']})"
               for r in replicas_read if r["status"] != "ok"]
    if standbys > len(replicas_read):
        unknown.append(f"the primary streams to {standbys} standby(s) and the snapshot read the index statistics of "
                       f"{len(replicas_read)} (give the snapshot every replica: DATABASE_READ_REPLICA_URL)")
    evidence = _rows(conn, "index_evidence", {"end_id": end.id, "period_s": period.total_seconds()})
    unused = _unused_indexes(catalog, evidence, sources=sources, unknown=unknown, period=period,
                             end_at=end.taken_at, declared=declared)
    duplicates, invalid = _index_findings(catalog, declared)
    tables["unused_indexes"], tables["duplicate_indexes"], tables["invalid_indexes"] = unused, duplicates, invalid
    watched = {}
    for e in evidence:
        watched[e["source"]] = max(watched.get(e["source"], dt.timedelta(0)), end.taken_at - e["first_seen"])
    notes.append("Index usage: statistics observed for " + ", ".join(
        f"{_span(watched.get(src, dt.timedelta(0)))} on {_source(src)}" for src in sources)
        + f"; an index is called unused after {_span(period)} without a scan on every one of them"
        + (f"; verdicts unknown: {'; '.join(unknown)}" if unknown else "") + ".")
    waiting = [u for u in unused if u["verdict"] == "not enough evidence"]
    if waiting:
        least = _span(min(dt.timedelta(days=u["observed_days"]) for u in waiting))
        notes.append(f"{len(waiting)} index(es) without a scan so far, the least observed for {least}: not enough "
                     f"evidence yet for DROP INDEX advice (needed: {_span(period)}).")
    for u in unused:
        if u["verdict"] != "unused":
            continue
        schema, name = u["index"].split(".", 1)
        evidence_ = {"observed_days": u["observed_days"], "sources": len(sources), "scans_since_reset": u["scans_since_reset"],
                     "size_bytes": u["size_bytes"]}
        if u["in_catalog"] is None:
            rec("unused_index", "low", u["index"], f"{u['why']}; the index catalog could not be read, so no DROP "
                "advice (a declared index must leave the catalog first)", evidence_)
            continue
        if u["in_catalog"]:
            rec("unused_index", "low", u["index"],
                f"{u['why']}; declared in the index catalog (include/sql/maintenance/index_catalog.sql"
                + (f", why: {declared[name]}" if declared and name in declared else "")
                + "): if it is no longer needed, remove its entry from the catalog — never drop it while it is "
                "declared, the index pipeline builds it again", evidence_)
            continue
        rec("unused_index", "medium" if u["size_bytes"] >= 1024 * 1024 else "low", u["index"],
            f"{u['why']}; {_fmt_bytes(u['size_bytes'])} to maintain on every write", evidence_,
            psycopg.sql.SQL("DROP INDEX CONCURRENTLY {}.{}").format(
                psycopg.sql.Identifier(schema), psycopg.sql.Identifier(name)).as_string(conn))
    for d in duplicates:
        schema, name = d["index"].split(".", 1)
        message = f"its columns are a prefix of {d['covered_by']} ({d['covering_definition']}); {_fmt_bytes(d['size_bytes'])}"
        if d["in_catalog"] is not False:
            rec("duplicate_index", "low", d["index"], message + "; declared in the index catalog: remove its entry from "
                "include/sql/maintenance/index_catalog.sql rather than dropping it (the index pipeline builds it again)",
                {"size_bytes": d["size_bytes"], "covered_by": d["covered_by"]})
            continue
        rec("duplicate_index", "medium", d["index"], message,
            {"size_bytes": d["size_bytes"], "covered_by": d["covered_by"]},
            psycopg.sql.SQL("DROP INDEX CONCURRENTLY {}.{}").format(
                psycopg.sql.Identifier(schema), psycopg.sql.Identifier(name)).as_string(conn))
    for i in invalid:
        schema, name = i["index"].split(".", 1)
        unique = i["definition"].startswith("CREATE UNIQUE")
        if declared is None or name in declared:
            rec("invalid_index", "high", i["index"], "INVALID (a failed concurrent build): maintained on writes, never used "
                "by queries; declared in the index catalog: csl_index_install repairs it (python -m csl indexes apply)",
                {"size_bytes": i["size_bytes"], "definition": i["definition"]})
            continue
        rec("invalid_index", "high", i["index"],
            "INVALID (a failed concurrent build): maintained on writes, never used by queries"
            + ("; a unique build fails again while duplicates exist: drop it, fix the data, build again" if unique
               else ""),
            {"size_bytes": i["size_bytes"], "definition": i["definition"]},
            psycopg.sql.SQL("DROP INDEX CONCURRENTLY {}.{}" if unique else "REINDEX INDEX CONCURRENTLY {}.{}").format(
                psycopg.sql.Identifier(schema), psycopg.sql.Identifier(name)).as_string(conn))

    advice_rows: list[dict[str, Any]] = []
    problem = None
    if advise_with_hypopg and p.advise_queries and hypo.hypopg_available(conn):
        problem = hypo.advisor_role_problem(conn, p.advisor_role)
        if problem:
            notes.append(f"Missing-index advice skipped: {problem}. The advisor plans query texts only as a role that "
                         "cannot write, never as the report's own role.")
    if advise_with_hypopg and p.advise_queries and not problem:
        if hypo.hypopg_available(conn):
            attnames = {}
            for i in catalog:
                if i["is_valid"] and i["columns"] and i["columns"][0] > 0:
                    attnames.setdefault((i["schema_name"], i["table_name"]), set()).add(i["columns"][0])
            leading = _leading_columns(conn, attnames)
            slow = [r for r in sorted(queries, key=lambda r: -r["total_ms"]) if hypo.costable(r["query"])][: p.advise_queries]
            for a in hypo.advise(conn, slow, role=p.advisor_role, min_cost_drop_pct=p.min_cost_drop_pct,
                                 existing_leading=leading):
                row = a.as_dict()
                row["query"] = _short(row["query"])
                match = next(r for r in slow if r["queryid"] == a.queryid)
                row["total_ms_in_window"], row["calls_in_window"] = round(match["total_ms"], 1), match["calls"]
                advice_rows.append(row)
                if a.suggested:
                    rec("missing_index", "high", f"{a.schema_name}.{a.table_name} ({', '.join(a.columns)})",
                        f"query {a.queryid} ({match['calls']:,} calls, {match['total_ms']:,.0f} ms in the window): "
                        f"{a.reason}", {"cost_before": a.cost_before, "cost_after": a.cost_after,
                                        "cost_drop_pct": a.cost_drop_pct, "calls": match["calls"],
                                        "total_ms": round(match["total_ms"], 1)}, a.statement)
        else:
            notes.append("HypoPG is not installed in this database: no missing-index advice.")
    tables["index_advice"] = advice_rows

    # -- tables ------------------------------------------------------------------------------
    tdeltas = _rows(conn, "table_deltas", {"end_id": end.id, "base_id": base.id if base else None})
    settings = {r["name"]: r["setting"] for r in _rows(conn, "settings")}
    vac_thr = float(settings.get("autovacuum_vacuum_threshold", 50))
    vac_sf = float(settings.get("autovacuum_vacuum_scale_factor", 0.2))
    an_thr = float(settings.get("autovacuum_analyze_threshold", 50))
    an_sf = float(settings.get("autovacuum_analyze_scale_factor", 0.1))
    freeze_max = int(settings.get("autovacuum_freeze_max_age", 200_000_000))
    table_rows, vacuum_rows = [], []
    heap_hit = heap_read = idx_hit = idx_read = 0
    for t in sorted(tdeltas, key=lambda r: -r["total_bytes"]):
        name = f"{t['schema_name']}.{t['table_name']}"
        heap_hit, heap_read = heap_hit + t["heap_blks_hit"], heap_read + t["heap_blks_read"]
        idx_hit, idx_read = idx_hit + t["idx_blks_hit"], idx_read + t["idx_blks_read"]
        total_tup = t["n_live_tup"] + t["n_dead_tup"]
        dead_ratio = round(t["n_dead_tup"] / total_tup, 4) if total_tup else 0.0
        table_rows.append({"table": name, "total_bytes": t["total_bytes"], "table_bytes": t["table_bytes"],
                           "index_bytes": t["index_bytes"], "growth_bytes": t["growth_bytes"],
                           "live_tuples": t["n_live_tup"], "dead_tuples": t["n_dead_tup"], "dead_ratio": dead_ratio,
                           "seq_scans": t["seq_scans"], "seq_rows_read": t["seq_rows_read"], "idx_scans": t["idx_scans"],
                           "inserted": t["inserted"], "updated": t["updated"], "deleted": t["deleted"],
                           "hit_ratio": _ratio(t["heap_blks_hit"], t["heap_blks_read"]), "xid_age": t["xid_age"]})
        vac_days = _age_days(now, t["last_vacuum"], t["last_autovacuum"])
        an_days = _age_days(now, t["last_analyze"], t["last_autoanalyze"])
        vac_limit = vac_thr + vac_sf * t["reltuples"]
        an_limit = an_thr + an_sf * t["reltuples"]
        vacuum_rows.append({"table": name, "dead_tuples": t["n_dead_tup"], "dead_ratio": dead_ratio,
                            "autovacuum_trigger": round(vac_limit), "days_since_vacuum": vac_days,
                            "modified_since_analyze": t["n_mod_since_analyze"], "autoanalyze_trigger": round(an_limit),
                            "days_since_analyze": an_days, "xid_age": t["xid_age"]})
        if t["n_dead_tup"] >= p.min_dead_tuples and dead_ratio >= p.dead_ratio:
            rec("dead_tuples", "medium", name,
                f"{t['n_dead_tup']:,} dead tuples ({dead_ratio:.0%} of {total_tup:,}); autovacuum triggers at "
                f"{vac_limit:,.0f}; last vacuum {f'{vac_days} days ago' if vac_days is not None else 'never'}",
                {"dead_tuples": t["n_dead_tup"], "dead_ratio": dead_ratio, "autovacuum_trigger": round(vac_limit),
                 "days_since_vacuum": vac_days},
                psycopg.sql.SQL("VACUUM (ANALYZE) {}.{}").format(psycopg.sql.Identifier(t["schema_name"]),
                                                                 psycopg.sql.Identifier(t["table_name"])).as_string(conn))
        stale = t["n_mod_since_analyze"] >= an_limit and (an_days is None or an_days >= p.stale_days) \
            and t["n_mod_since_analyze"] > 0
        if stale:
            rec("stale_statistics", "medium", name,
                f"{t['n_mod_since_analyze']:,} rows changed since the last analyze "
                f"({'never analyzed' if an_days is None else f'{an_days} days ago'}); autoanalyze triggers at {an_limit:,.0f}",
                {"modified_since_analyze": t["n_mod_since_analyze"], "days_since_analyze": an_days,
                 "autoanalyze_trigger": round(an_limit)},
                psycopg.sql.SQL("ANALYZE {}.{}").format(psycopg.sql.Identifier(t["schema_name"]),
                                                        psycopg.sql.Identifier(t["table_name"])).as_string(conn))
        if t["xid_age"] > freeze_max * 0.75:
            rec("wraparound", "high", name,
                f"age(relfrozenxid) {t['xid_age']:,} is {100 * t['xid_age'] / freeze_max:.0f}% of "
                f"autovacuum_freeze_max_age {freeze_max:,} ({100 * t['xid_age'] / WRAPAROUND_LIMIT:.1f}% to wraparound)",
                {"xid_age": t["xid_age"], "freeze_max_age": freeze_max},
                psycopg.sql.SQL("VACUUM (FREEZE, ANALYZE) {}.{}").format(
                    psycopg.sql.Identifier(t["schema_name"]), psycopg.sql.Identifier(t["table_name"])).as_string(conn))
    tables["tables"], tables["vacuum_analyze"] = table_rows, vacuum_rows

    bloat = [b for b in _rows(conn, "table_bloat") if b["real_bytes"]]
    for b in bloat:
        b["table"] = f"{b.pop('schema_name')}.{b.pop('table_name')}"
        for k in ("real_bytes", "expected_bytes", "bloat_bytes"):
            b[k] = int(b[k])
        b["bloat_pct"] = float(b["bloat_pct"])
        if not b["is_na"] and b["bloat_pct"] >= p.bloat_pct and b["bloat_bytes"] >= p.bloat_min_bytes:
            rec("bloat", "medium", b["table"],
                f"estimated {_fmt_bytes(b['bloat_bytes'])} of {_fmt_bytes(b['real_bytes'])} wasted ({b['bloat_pct']}%, "
                "statistics estimate): VACUUM makes it reusable, only a rewrite (pg_repack / VACUUM FULL) returns it",
                {"bloat_bytes": b["bloat_bytes"], "real_bytes": b["real_bytes"], "bloat_pct": b["bloat_pct"]})
    tables["bloat_estimate"] = bloat[:50]
    exact = []
    for name in p.exact_bloat_tables:
        if conn.execute(MARK + "SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
            notes.append(f"exact bloat: no table {name}")
            continue
        try:
            with conn.transaction():
                row = _rows(conn, "tuple_stats", {"relid": name})[0]
            exact.append({"table": name, **{k: float(v) if v is not None else None for k, v in row.items()}})
        except psycopg.Error as exc:
            notes.append(f"exact bloat of {name} unavailable: {str(exc).strip().splitlines()[0]}")
    tables["bloat_pgstattuple"] = exact

    wrap = _rows(conn, "wraparound")
    tables["wraparound"] = wrap
    for w in wrap:
        if w["xid_age"] > freeze_max * 0.75 or w["pct_to_wraparound"] >= 50:
            rec("wraparound", "high", f"database {w['database_name']}",
                f"age(datfrozenxid) {w['xid_age']:,} ({w['pct_to_wraparound']}% to wraparound, "
                f"autovacuum_freeze_max_age {freeze_max:,})", {"xid_age": w["xid_age"], "pct": float(w["pct_to_wraparound"])})
    seqs = _rows(conn, "sequences")
    for s in seqs:
        s["used_pct"] = float(s["used_pct"]) if s["used_pct"] is not None else None
        if s["used_pct"] is not None and s["used_pct"] >= p.sequence_pct:
            target = f"{s['schema_name']}.{s['sequence_name']}"
            rec("sequence_exhaustion", "high", target,
                f"{s['used_pct']}% used: last value {s['last_value']:,} of {s['max_value']:,}"
                + (f" (column {s['table_name']}.{s['column_name']} is {s['column_type']})" if s["column_name"] else ""),
                {"used_pct": s["used_pct"], "last_value": s["last_value"], "max_value": s["max_value"]})
    tables["sequences"] = seqs[:50]

    # -- database-wide: hit ratio, connections, sessions, replicas ----------------------------
    series_snaps = _series_snapshots(conn, base, end)
    heads = _rows(conn, "series_snapshots", {"snapshot_ids": [s.id for s in series_snaps]})
    end_fig = heads[-1]["figures"] if heads else {}
    base_head = heads[0] if base and len(heads) > 1 else None
    blks = _counter_delta(end_fig, base_head["figures"] if base_head else None,
                          reset=base_head is None or base_head["db_stats_reset"] != heads[-1]["db_stats_reset"]
                          or base_head["postmaster_start"] != heads[-1]["postmaster_start"])
    db_hit_ratio = _ratio(blks["blks_hit"], blks["blks_read"])
    cache = [{"scope": "database", "hit_ratio": db_hit_ratio, "blks_hit": blks["blks_hit"], "blks_read": blks["blks_read"]},
             {"scope": "tables (heap)", "hit_ratio": _ratio(heap_hit, heap_read), "blks_hit": heap_hit, "blks_read": heap_read},
             {"scope": "indexes", "hit_ratio": _ratio(idx_hit, idx_read), "blks_hit": idx_hit, "blks_read": idx_read}]
    tables["cache_hit_ratio"] = cache
    for c in cache:
        if c["hit_ratio"] is not None and c["hit_ratio"] < p.hit_ratio_min and c["blks_hit"] + c["blks_read"] >= 10_000:
            rec("cache_hit_ratio", "medium", c["scope"],
                f"cache hit ratio {c['hit_ratio']:.2%} (< {p.hit_ratio_min:.0%}): {c['blks_read']:,} blocks read from disk, "
                f"{c['blks_hit']:,} from shared buffers", {k: c[k] for k in ("hit_ratio", "blks_hit", "blks_read")})
    connections = end_fig.get("connections", {})
    max_conn = end_fig.get("max_connections")
    tables["connections"] = [{"state": k, "connections": v} for k, v in sorted(connections.items())]
    used = sum(connections.values())
    if max_conn and used >= 0.8 * max_conn:
        rec("connections", "high", "max_connections", f"{used} of {max_conn} connections in use ({used / max_conn:.0%})",
            {"connections": used, "max_connections": max_conn})
    sessions = _rows(conn, "sessions", {"long_running_s": p.long_running_s, "idle_in_xact_s": p.idle_in_xact_s})
    for s in sessions:
        s["query"] = _shown(s["query"])  # literals out: they are the platform's data (emails, names, tokens)
        for k in ("xact_age_s", "query_age_s", "state_age_s"):
            s[k] = float(s[k]) if s[k] is not None else None
        if (s["state"] or "").startswith("idle in transaction"):
            rec("idle_in_transaction", "high", f"pid {s['pid']}",
                f"idle in transaction for {s['state_age_s']:,.0f} s (transaction open {s['xact_age_s']:,.0f} s): holds "
                "locks and the cleanup horizon; set idle_in_transaction_session_timeout",
                {"state_age_s": s["state_age_s"], "xact_age_s": s["xact_age_s"], "user": s["user_name"]})
        elif s["state"] == "active" and s["query_age_s"] and s["query_age_s"] >= p.long_running_s:
            rec("long_running", "medium", f"pid {s['pid']}", f"query running for {s['query_age_s']:,.0f} s",
                {"query_age_s": s["query_age_s"], "user": s["user_name"]})
    tables["sessions"] = sessions
    replicas = end_fig.get("replicas", [])
    tables["replicas"] = replicas
    for r in replicas:
        lag = r.get("replay_lag_s")
        if lag is not None and lag > p.replica_lag_s:
            rec("replica_lag", "high", r.get("application_name") or "replica",
                f"replay lag {lag:,.1f} s (> {p.replica_lag_s:g} s), {r.get('replay_lag_bytes') or 0:,.0f} bytes behind",
                {"replay_lag_s": lag, "replay_lag_bytes": r.get("replay_lag_bytes")})

    # -- our pipelines -----------------------------------------------------------------------
    span = {"start": window_start or end.taken_at - p.window, "end": end.taken_at}
    pipelines = {
        "pipeline_runs": _optional_rows(conn, "csl_ops.task_runs", "pipelines_task_runs", span),
        "maintenance_actions": _optional_rows(conn, "csl_ops.maintenance_actions", "pipelines_maintenance", span),
        "index_builds": _optional_rows(conn, "csl_ops.index_builds", "pipelines_index_builds", span),
        "settlement_runs": _optional_rows(conn, "csl_ops.settlement_runs", "pipelines_settlement", span),
        "storage_sweeps": _optional_rows(conn, "csl_ops.storage_sweeps", "pipelines_storage_sweeps", span),
        "storage_findings": _optional_rows(conn, "csl_ops.storage_findings", "pipelines_storage_findings", span),
    }
    for name, rows in pipelines.items():
        tables[name] = [{k: (float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, (int, float)) else v)
                         for k, v in r.items()} for r in rows or []]
        if rows is None:
            notes.append(f"{name.replace('_', ' ')}: that pipeline's table is not in this database")
    for r in tables["pipeline_runs"]:
        if r["failed"]:
            rec("pipeline_failures", "high", f"{r['dag_id']}.{r['task_id']}",
                f"{r['failed']} of {r['runs']} runs failed in the window; last: {r['last_status']}"
                + (f" ({_short(r['last_error'], 160)})" if r["last_error"] else ""),
                {"runs": r["runs"], "failed": r["failed"]})

    # -- charts, summary ---------------------------------------------------------------------
    charts = _charts(conn, series_snaps, heads, tables, queries)
    severity_order = {"high": 0, "medium": 1, "low": 2}
    recs.sort(key=lambda r: (severity_order[r["severity"]], r["kind"], r["target"]))
    tables["recommendations"] = [{**{k: v for k, v in r.items() if k != "evidence"},
                                  "evidence": ", ".join(f"{k}={v}" for k, v in r["evidence"].items())} for r in recs]
    meta = {
        "database": conn.info.dbname,
        "generated_at": now,
        "window": p.as_dict()["window"],
        "window_start": window_start,
        "window_end": end.taken_at,
        "snapshot_id": end.id,
        "baseline_snapshot_id": base.id if base else None,
        "previous_baseline_snapshot_id": prev.id if prev else None,
        "stats_reset": end.pgss_stats_reset,
        "snapshot_capture_ms": end.capture_ms,
        "snapshots_in_window": len(series_snaps),
        "notes": notes,
        "params": p.as_dict(),
        "excluded": "the report's own statements (marked " + MARK + ") are left out of the query tables",
    }
    summary = {
        "queries": len(queries),
        "db_time_ms": round(sum(r["total_ms"] for r in queries), 1),
        "calls": sum(r["calls"] for r in queries),
        "regressions": len(regressions),
        "missing_index_advice": sum(1 for a in advice_rows if a["suggested"]),
        "unused_indexes": sum(1 for u in unused if u["verdict"] == "unused"),
        "duplicate_indexes": len(duplicates),
        "invalid_indexes": len(invalid),
        "recommendations": len(recs),
        "high": sum(1 for r in recs if r["severity"] == "high"),
        "cache_hit_ratio": db_hit_ratio,
        "database_bytes": end_fig.get("database_bytes"),
    }
    return {"meta": meta, "summary": summary, "tables": tables, "charts": charts, "recommendations": recs}


def _leading_columns(conn: psycopg.Connection, attnums: dict[tuple[str, str], set[int]]) -> set[tuple[str, str, str]]:
    out = set()
    for (schema, table), nums in attnums.items():
        rows = conn.execute(MARK + "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum = ANY(%s)",
                            (psycopg.sql.SQL("{}.{}").format(psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table))
                             .as_string(conn), list(nums))).fetchall()
        out |= {(schema, table, r[0]) for r in rows}
    return out


def _series_snapshots(conn: psycopg.Connection, base: Snapshot | None, end: Snapshot, limit: int = 48) -> list[Snapshot]:
    from csl.reports.snapshot import snapshots_between

    if base is None:
        return [end]
    snaps = snapshots_between(conn, base.taken_at, end.taken_at)
    if len(snaps) > limit:  # evenly thinned, first and last kept
        step = (len(snaps) - 1) / (limit - 1)
        snaps = [snaps[round(i * step)] for i in range(limit)]
    return snaps


def _counter_delta(end: dict[str, Any], base: dict[str, Any] | None, *, reset: bool) -> dict[str, int]:
    out = {}
    for key in ("blks_hit", "blks_read", "xact_commit", "xact_rollback"):
        e = int(end.get(key) or 0)
        b = int(base.get(key) or 0) if base else 0
        out[key] = e if reset or e < b else e - b
    return out


def _charts(conn, snaps: list[Snapshot], heads: list[dict[str, Any]], tables: dict[str, Any],
            queries: list[dict[str, Any]]) -> dict[str, Any]:
    """Series for the trend charts (one point per snapshot interval) and the top-queries bars."""
    charts: dict[str, Any] = {
        "top_queries": [{"label": f"{n}. {r['query'][:30]}", "value": r["total_ms"],
                         "title": f"query {r['queryid']}: {r['query'][:200]}"}
                        for n, r in enumerate(tables["top_queries_total_time"][:10], 1)],
    }
    ids = [s.id for s in snaps]
    times = [h["taken_at"] for h in heads]
    charts["times"] = times
    if len(heads) < 2:
        return charts
    top_ids = [r["queryid"] for r in tables["top_queries_total_time"][:5]]
    raw = _rows(conn, "series_statements", {"snapshot_ids": ids, "queryids": top_ids})
    at = {(r["snapshot_id"], r["queryid"]): r for r in raw}
    series = []
    for qid in top_ids:
        points = []
        for prev_h, h in itertools.pairwise(heads):
            a, b = at.get((prev_h["id"], qid)), at.get((h["id"], qid))
            if b is None:
                points.append(None)
                continue
            reset = (a is None or prev_h["pgss_stats_reset"] != h["pgss_stats_reset"]
                     or b["calls"] < a["calls"] or b["total_ms"] < a["total_ms"])
            calls = b["calls"] - (0 if reset else a["calls"])
            total = b["total_ms"] - (0 if reset else a["total_ms"])
            points.append(round(total / calls, 3) if calls > 0 else None)
        text = next((r["query"] for r in tables["top_queries_total_time"] if r["queryid"] == qid), "")
        series.append({"name": f"{top_ids.index(qid) + 1}. {text[:34]}", "points": points})
    charts["query_mean_ms"] = {"x": times[1:], "series": series, "unit": "ms per call"}
    hit_points = []
    for prev_h, h in itertools.pairwise(heads):
        d = _counter_delta(h["figures"], prev_h["figures"], reset=prev_h["db_stats_reset"] != h["db_stats_reset"]
                           or prev_h["postmaster_start"] != h["postmaster_start"])
        hit_points.append(_ratio(d["blks_hit"], d["blks_read"]))
    charts["hit_ratio"] = {"x": times[1:], "series": [{"name": "database", "points": hit_points}], "unit": "ratio"}
    largest = sorted(tables["tables"], key=lambda t: -t["total_bytes"])[:5]
    deadest = sorted(tables["tables"], key=lambda t: -t["dead_tuples"])[:5]
    relids = conn.execute(
        MARK + "SELECT DISTINCT relid, schema_name || '.' || table_name FROM csl_ops.perf_snapshot_tables"
        " WHERE snapshot_id = %s AND schema_name || '.' || table_name = ANY(%s)",
        (ids[-1], [t["table"] for t in largest + deadest])).fetchall()
    traw = _rows(conn, "series_tables", {"snapshot_ids": ids, "relids": [r[0] for r in relids]})
    tat = {(r["snapshot_id"], r["name"]): r for r in traw}
    charts["table_bytes"] = {"x": times, "unit": "bytes", "series": [
        {"name": t["table"], "points": [(tat.get((i, t["table"])) or {}).get("total_bytes") for i in ids]} for t in largest]}
    charts["dead_tuples"] = {"x": times, "unit": "dead tuples", "series": [
        {"name": t["table"], "points": [(tat.get((i, t["table"])) or {}).get("n_dead_tup") for i in ids]} for t in deadest]}
    return charts
