"""Missing-index advice verified with HypoPG.

For each slow query: its generic plan (``plan_cache_mode = force_generic_plan``, the text
prepared, ``EXPLAIN EXECUTE q(NULL, …)``), the columns its sequential scans filter or join on,
one hypothetical index per candidate (``hypopg_create_index``), the plan again — prepared
*after* the hypothetical index exists, or the cached plan would never see it — and the cost
before and after. An index is suggested only when the planner uses it and the cost drops by at
least ``min_cost_drop_pct``; every piece of advice carries those figures and the ``CREATE INDEX
CONCURRENTLY`` to run.

The texts come from ``pg_stat_statements``: anyone who can run a query can choose them, so they
are hostile. A text is only ever *parsed* as one statement — a protocol-level Parse
(``PQprepare``, the extended protocol), which refuses a second statement, never pasted into SQL
— and planned inside a ``READ ONLY`` transaction after ``SET LOCAL ROLE`` to the advisor role
(``csl_advisor``: reads everything, writes nothing), so neither a hidden statement nor a
function the planner calls can write. No role, no advice: never the owner instead. Only
read-only SELECT/WITH statements are costed: ``EXPLAIN`` of a write checks the write privilege,
which the advisor must not have. Nothing is executed: ``EXPLAIN`` without ``ANALYZE``, and the
transaction is rolled back.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from csl.errors import BadInput
from csl.reports import sqltext
from csl.reports.snapshot import MARK
from csl.sqlfiles import load

__all__ = ["ADVISOR_ROLE", "AdvisorRoleError", "IndexAdvice", "advise", "advisor_role_problem", "costable",
           "hypopg_available"]

log = logging.getLogger("csl.reports.advice")

ADVISOR_ROLE = "csl_advisor"
_IDENT = re.compile(r'"((?:[^"]|"")+)"|\b([A-Za-z_][A-Za-z0-9_$]*)\b')
_EQUALITY = re.compile(r'(?:"((?:[^"]|"")+)"|\b([A-Za-z_][A-Za-z0-9_$]*))\s*(?:=|IS NULL)(?!>)')
_names = itertools.count(1)


class AdvisorRoleError(BadInput):
    """The advisor role is missing, not ours to use, or could write: no advice (the message says which)."""


@dataclass
class IndexAdvice:
    """One query's outcome: the index to build (when ``suggested``) or why there is none."""

    queryid: int
    query: str
    suggested: bool = False
    reason: str = ""
    schema_name: str | None = None
    table_name: str | None = None
    columns: list[str] = field(default_factory=list)
    cost_before: float | None = None
    cost_after: float | None = None
    cost_drop_pct: float | None = None
    plan_before: str | None = None
    plan_after: str | None = None
    statement: str | None = None
    candidates_tried: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def costable(query: str | None) -> bool:
    """A statement the advisor looks at: SELECT/WITH (costed) or UPDATE/DELETE (listed as not
    costed: a write), not the foreign-key checks PostgreSQL runs itself (always by primary key).
    A first look only: what is planned, and how, is decided by :func:`advise`."""
    return sqltext.first_word(query) in ("SELECT", "WITH", "UPDATE", "DELETE") and not sqltext.is_ri_check(query)


def hypopg_available(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(MARK + "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'hypopg')").fetchone()[0])


def advisor_role_problem(conn: psycopg.Connection, role: str) -> str | None:
    """Why ``role`` cannot be the advisor's (None: it can): it must exist, the current user must be
    a member (``SET ROLE``), and it must be unable to write — no superuser, no write privilege on
    any table of this database."""
    row = conn.execute(MARK + load("reports/advisor_role.sql"), {"role": role}).fetchone()
    if row is None:
        return f"role {role!r} does not exist (create it NOLOGIN with pg_monitor and pg_read_all_data, grant it to " \
               f"{conn.info.user})"
    member, superuser, writable = row
    if not member:
        return f"{conn.info.user} is not a member of role {role!r} (GRANT {role} TO {conn.info.user})"
    if superuser:
        return f"role {role!r} is a superuser: the advisor needs a role that cannot write"
    if writable:
        return f"role {role!r} can write {writable}: the advisor needs a role that cannot write"
    return None


def _prepare(conn: psycopg.Connection, name: str, text: str) -> int:
    """Parse ``text`` as the prepared statement ``name`` through the extended protocol (one Parse
    message: a second statement is an error, nothing runs); returns its number of parameters."""
    with conn.lock:
        pgconn = conn.pgconn
        result = pgconn.prepare(name.encode(), text.encode(conn.info.encoding))
        if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        described = pgconn.describe_prepared(name.encode())
        if described.status != psycopg.pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(described, encoding=conn.info.encoding)
        return described.nparams


def _explain(conn: psycopg.Connection, text: str, prepared: list[str]) -> dict[str, Any]:
    """The generic plan of ``text``, every parameter NULL (the name is kept in ``prepared`` so the
    caller deallocates it once the transaction is over, whatever happened)."""
    name = f"csl_advice_{next(_names)}"
    prepared.append(name)
    nparams = _prepare(conn, name, text)
    args = sql.SQL("({})").format(sql.SQL(", ").join([sql.NULL] * nparams)) if nparams else sql.SQL("")
    row = conn.execute(sql.SQL(MARK + "EXPLAIN (FORMAT JSON) EXECUTE {}").format(sql.Identifier(name)) + args
                       ).fetchone()
    plan = row[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return plan[0]["Plan"]


def _deallocate(conn: psycopg.Connection, names: list[str]) -> None:
    for name in names:
        try:
            conn.execute(sql.SQL(MARK + "DEALLOCATE {}").format(sql.Identifier(name)))
        except psycopg.errors.InvalidSqlStatementName:
            pass  # never prepared (its Parse failed)
    names.clear()


def _walk(node: dict[str, Any], ancestors: tuple[dict[str, Any], ...] = ()):
    yield node, ancestors
    for child in node.get("Plans", []) or []:
        yield from _walk(child, ancestors + (node,))


def _identifiers(expression: str) -> list[str]:
    return [(quoted.replace('""', '"') if quoted else plain) for quoted, plain in _IDENT.findall(expression)]


def _qualified(expression: str, alias: str) -> list[str]:
    pattern = re.compile(r'(?:"' + re.escape(alias) + r'"|\b' + re.escape(alias) + r')\.(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))')
    return [(q.replace('""', '"') if q else p) for q, p in pattern.findall(expression)]


def _seq_scan_candidates(plan: dict[str, Any], columns_of) -> list[tuple[str, str, list[str]]]:
    """(schema, table, columns) candidates from the plan's sequential scans, best guesses first."""
    found: list[tuple[str, str, list[str]]] = []
    for node, ancestors in _walk(plan):
        if node.get("Node Type") != "Seq Scan" or "Relation Name" not in node:
            continue
        schema, table = node.get("Schema", "public"), node["Relation Name"]
        alias = node.get("Alias", table)
        known = columns_of(schema, table)
        filter_text = node.get("Filter", "")
        equality = [c for q, p in _EQUALITY.findall(filter_text) for c in [q.replace('""', '"') if q else p] if c in known]
        in_filter = [c for c in _identifiers(filter_text) if c in known]
        joined: list[str] = []
        for parent in ancestors:
            for key in ("Hash Cond", "Merge Cond", "Join Filter"):
                joined += [c for c in _qualified(parent.get(key, ""), alias) if c in known]
        ordered: list[str] = []
        for column in equality + joined + in_filter:
            if column not in ordered:
                ordered.append(column)
        if not ordered:
            continue
        candidates = [[c] for c in ordered]
        leading = [c for c in ordered if c in equality or c in joined]
        if len(ordered) > 1:
            composite = leading + [c for c in ordered if c not in leading][:1]
            if len(composite) > 1:
                candidates.insert(0, composite[:4])
        found += [(schema, table, cols) for cols in candidates]
    return found


def _index_name(table: str, columns: list[str]) -> str:
    base = re.sub(r"[^a-z0-9_]+", "_", f"{table}_{'_'.join(columns)}".lower()).strip("_")
    return f"{base[:58]}_idx"


def _plan_summary(plan: dict[str, Any]) -> str:
    parts = []
    for node, ancestors in _walk(plan):
        label = node.get("Node Type", "?")
        if node.get("Index Name"):
            label += f" using {node['Index Name']}"
        if node.get("Relation Name"):
            label += f" on {node['Relation Name']}"
        parts.append("  " * len(ancestors) + f"{label} (cost {node.get('Total Cost')})")
    return "\n".join(parts[:30])


def advise(conn: psycopg.Connection, queries: list[dict[str, Any]], *, role: str = ADVISOR_ROLE,
           min_cost_drop_pct: float = 50.0, existing_leading: set[tuple[str, str, str]] | None = None,
           statement_timeout_ms: int = 5000, max_candidates: int = 6) -> list[IndexAdvice]:
    """Advice for each of ``queries`` (dicts with ``queryid`` and ``query``), in order.

    ``conn``: an autocommit connection to the primary, in the database the queries ran in.
    ``role``: the role every plan is made as (see the module docstring); :class:`AdvisorRoleError`
    before any plan when it cannot be used. ``existing_leading``: (schema, table, first column) of
    valid indexes, not suggested again.
    """
    problem = advisor_role_problem(conn, role)
    if problem:
        raise AdvisorRoleError(problem)
    existing_leading = existing_leading or set()
    prepared: list[str] = []
    column_cache: dict[tuple[str, str], set[str]] = {}

    def columns_of(schema: str, table: str) -> set[str]:
        key = (schema, table)
        if key not in column_cache:
            rows = conn.execute(
                MARK + "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                (schema, table)).fetchall()
            column_cache[key] = {r[0] for r in rows}
        return column_cache[key]

    results = []
    for q in queries:
        text = q.get("query") or ""
        advice = IndexAdvice(queryid=q["queryid"], query=sqltext.redact(text, limit=1000))
        results.append(advice)
        refused = sqltext.not_costable(text)
        if refused:
            advice.reason = refused
            continue
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(MARK + "SET TRANSACTION READ ONLY")
                conn.execute(sql.SQL(MARK + "SET LOCAL ROLE {}").format(sql.Identifier(role)))
                conn.execute(MARK + f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
                conn.execute(MARK + "SET LOCAL plan_cache_mode = force_generic_plan")
                conn.execute(MARK + "SELECT hypopg_reset()")
                before = _explain(conn, text, prepared)
                advice.cost_before = float(before["Total Cost"])
                advice.plan_before = _plan_summary(before)
                candidates = [c for c in _seq_scan_candidates(before, columns_of)
                              if (c[0], c[1], c[2][0]) not in existing_leading or len(c[2]) > 1][:max_candidates]
                if not candidates:
                    advice.reason = "no sequential scan with a filter or join column in its plan"
                    continue
                best: tuple[float, tuple[str, str, list[str]], dict[str, Any]] | None = None
                for schema, table, cols in candidates:
                    advice.candidates_tried += 1
                    conn.execute(MARK + "SELECT hypopg_reset()")
                    create = sql.SQL("CREATE INDEX ON {}.{} ({})").format(
                        sql.Identifier(schema), sql.Identifier(table),
                        sql.SQL(", ").join(sql.Identifier(c) for c in cols)).as_string(conn)
                    hypo_name = conn.execute(MARK + "SELECT indexname FROM hypopg_create_index(%s)", (create,)).fetchone()[0]
                    after = _explain(conn, text, prepared)  # prepared after the hypothetical index exists
                    used = any(n.get("Index Name") == hypo_name for n, _ in _walk(after))
                    cost = float(after["Total Cost"])
                    if used and (best is None or cost < best[0]):
                        best = (cost, (schema, table, cols), after)
                conn.execute(MARK + "SELECT hypopg_reset()")
        except psycopg.Error as exc:
            advice.reason = f"could not be costed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            log.info("query %s not costed: %s", q["queryid"], advice.reason)
            continue
        finally:
            _deallocate(conn, prepared)
        if best is None:
            advice.reason = f"the planner used none of {advice.candidates_tried} hypothetical index(es)"
            continue
        cost, (schema, table, cols), after = best
        drop = 100.0 * (advice.cost_before - cost) / advice.cost_before if advice.cost_before else 0.0
        advice.schema_name, advice.table_name, advice.columns = schema, table, cols
        advice.cost_after, advice.cost_drop_pct = round(cost, 2), round(drop, 1)
        advice.plan_after = _plan_summary(after)
        if drop < min_cost_drop_pct:
            advice.reason = (f"best hypothetical index ({', '.join(cols)}) lowers the cost only {drop:.1f}% "
                             f"(< {min_cost_drop_pct:g}%)")
            continue
        advice.suggested = True
        advice.statement = sql.SQL("CREATE INDEX CONCURRENTLY {} ON {}.{} ({})").format(
            sql.Identifier(_index_name(table, cols)), sql.Identifier(schema), sql.Identifier(table),
            sql.SQL(", ").join(sql.Identifier(c) for c in cols)).as_string(conn)
        advice.reason = (f"hypothetical index on {schema}.{table} ({', '.join(cols)}): plan cost "
                         f"{advice.cost_before:,.1f} → {cost:,.1f} (−{drop:.1f}%)")
    return results
