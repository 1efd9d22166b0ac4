"""The data-quality gate over a run (Great Expectations when installed, the same checks in SQL
always): a failing check rolls the run back and keeps its findings."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg

from csl.settlement.params import Params
from csl.sqlfiles import load

log = logging.getLogger("csl.settlement")

GATE_CHECKS = ("postings_reference_entries_and_accounts", "entries_balance", "allocations_sum_to_price",
               "no_due_licence_left", "platform_rows_round_trip", "no_duplicate_splits", "findings",
               "payouts_clear_balances", "payouts_pay_verified_accounts", "payout_ranges_are_disjoint",
               "clawbacks_match_refunds", "clawbacks_within_allocation", "clawbacks_proportional")

class _GateLibraries:
    """Great Expectations takes about 6 s to import. A run that will post starts the import in
    a thread while PostgreSQL does the bulk of the work (psycopg releases the GIL while it waits),
    and the gate waits for it. Not a daemon thread: an import cut short by interpreter exit
    could hang, so at worst a failing run exits a few seconds later."""

    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def preload(cls) -> None:
        with cls._lock:
            if cls._thread is None and "great_expectations" not in sys.modules:
                cls._thread = threading.Thread(target=cls._import, name="csl-gate-import")
                cls._thread.start()

    @staticmethod
    def _import() -> None:
        try:
            import great_expectations  # noqa: F401
            import pandas  # noqa: F401
        except Exception:
            log.exception("preloading the gate's libraries failed")

    @classmethod
    def wait(cls) -> None:
        with cls._lock:
            thread = cls._thread
        if thread is not None:
            thread.join()


def run_gate(conn: psycopg.Connection, values: Mapping[str, Any]) -> dict[str, Any]:
    """The data-quality gate (Great Expectations) over the run's checks (``GATE_CHECKS``), the
    balance of every journal entry it made (sales, clawbacks, payouts) and its payouts."""
    started = time.perf_counter()
    rows = conn.execute(load("settlement/gate_checks.sql"), values).fetchall()
    posted = conn.execute("SELECT count(*), count(*) FILTER (WHERE kind = 'clawback') FROM csl_ops.journal_entries "
                          "WHERE run_id = %s", (values["run_id"],)).fetchone()
    if posted[1]:
        rows += conn.execute(load("settlement/gate_clawbacks.sql"), values).fetchall()
    else:  # the run clawed nothing back: nothing for these checks to judge
        rows += [("clawbacks_within_allocation", 0), ("clawbacks_proportional", 0)]
    posted = posted[0]
    if not posted and all(v == 0 for _, v in rows) and {c for c, _ in rows} == set(GATE_CHECKS):
        # nothing was posted and every check passes: no data for an expectation suite to judge
        return {"success": True, "checks": [{"check": c, "violations": int(v)} for c, v in rows], "entries": 0,
                "payouts": 0, "validation": [], "note": "no postings in this run: SQL checks only"}
    checked = time.perf_counter()
    _GateLibraries.wait()
    import great_expectations as gx
    import pandas as pd

    checks = pd.DataFrame(rows, columns=["check", "violations"])
    checks["violations"] = checks["violations"].astype("int64")
    entries = pd.DataFrame(conn.execute(
        "SELECT e.id, e.kind, e.currency, sum(p.amount_minor) FROM csl_ops.journal_entries e "
        "JOIN csl_ops.postings p ON p.entry_id = e.id WHERE e.run_id = %s GROUP BY 1, 2, 3",
        (values["run_id"],)).fetchall(), columns=["entry_id", "kind", "currency", "sum_minor"])
    entries["sum_minor"] = entries["sum_minor"].astype("int64")
    payouts = pd.DataFrame(conn.execute(
        "SELECT po.id, po.amount_minor, coalesce(pp.amount_minor, 0) FROM csl_ops.payouts po "
        "LEFT JOIN csl_ops.postings pp ON pp.source_id = po.idempotency_key AND pp.kind = 'payout' "
        "WHERE po.run_id = %s", (values["run_id"],)).fetchall(),
        columns=["payout_id", "amount_minor", "posted_minor"])
    for column in ("amount_minor", "posted_minor"):
        payouts[column] = payouts[column].astype("int64")

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("settlement")
    suites = [
        ("checks", checks, [gx.expectations.ExpectColumnValuesToBeBetween(column="violations", min_value=0, max_value=0),
                            gx.expectations.ExpectColumnDistinctValuesToEqualSet(column="check",
                                                                                 value_set=list(GATE_CHECKS)),
                            gx.expectations.ExpectTableRowCountToEqual(value=len(GATE_CHECKS))]),
        ("entries", entries, [gx.expectations.ExpectColumnValuesToBeBetween(column="sum_minor", min_value=0, max_value=0)]),
    ]
    if len(payouts):
        suites.append(("payouts", payouts, [
            gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="amount_minor", column_B="posted_minor"),
            gx.expectations.ExpectColumnValuesToBeBetween(column="amount_minor",
                                                          min_value=max(int(values["minimum"]), 1)),
        ]))
    imported = time.perf_counter()
    results = []
    for name, frame, expectations in suites:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name).get_batch(
            batch_parameters={"dataframe": frame})
        for expectation in expectations:
            result = batch.validate(expectation)
            results.append({"asset": name, "expectation": type(expectation).__name__, "success": bool(result.success),
                            "result": json.loads(json.dumps(result.result, default=str))})
    return {"success": all(r["success"] for r in results),
            "checks": [{"check": c, "violations": int(v)} for c, v in checks.itertuples(index=False)],
            "entries": len(entries), "payouts": len(payouts), "validation": results,
            "timings_s": {"checks_sql": round(checked - started, 3), "import_and_frames": round(imported - checked, 3),
                          "validation": round(time.perf_counter() - imported, 3)}}


def _record_failed_gate(conn: psycopg.Connection, run_key: str, params: Params, outcome: dict[str, Any]) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM csl_ops.settlement_findings WHERE run_id IN (SELECT id FROM csl_ops.settlement_runs "
                     "WHERE run_key = %s AND status <> 'committed')", (run_key,))
        run_id = conn.execute(
            "INSERT INTO csl_ops.settlement_runs (run_key, status, params, figures, gate, finished_at) "
            "VALUES (%s, 'gate_failed', %s, %s, %s, now()) "
            "ON CONFLICT (run_key) DO UPDATE SET status = 'gate_failed', figures = excluded.figures, "
            "gate = excluded.gate, finished_at = now() RETURNING id",
            (run_key, json.dumps(params.as_dict()), json.dumps(_small(outcome), default=str),
             json.dumps(outcome["gate"], default=str))).fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO csl_ops.settlement_findings (run_id, kind, license_id, detail) VALUES (%s, %s, %s, %s)",
                            [(run_id, f["kind"], f["license_id"], json.dumps(f["detail"], default=str))
                             for f in outcome.get("findings", [])])


def _small(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("findings",)} | {
        "findings_count": len(outcome.get("findings", []))}
