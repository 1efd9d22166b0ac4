"""``python -m csl snapshot`` and ``python -m csl report``: the performance report without Airflow.

Wired into ``csl.cli`` with ``add_cli(sub)``. Exit codes as the rest of the CLI: 0 done,
1 the work failed (database unreachable, …), 2 bad input (argparse, one line).
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

from csl.cliargs import number
from csl.cliargs import print_result as _print
from csl.cliargs import run_key as cli_run_key

__all__ = ["add_cli"]


def _window(text: str) -> datetime.timedelta:
    from csl.reports.analysis import ReportParamsError, parse_window

    try:
        return parse_window(text)
    except ReportParamsError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("window: ")) from None


def _qualified_table(text: str) -> str:
    import re

    if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"expected schema.table, got {text!r}")
    return text


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or os.environ.get("CSL_REPORTS_DIR") or "csl_reports")


def _cmd_snapshot(args: argparse.Namespace, settings: Any) -> int:
    from csl.db import Database
    from csl.reports import replicas_of, snapshot_and_prune

    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        run = snapshot_and_prune(conn, replicas=replicas_of(db), retention_days=args.retention_days,
                                 report_retention_days=args.report_retention_days, out_dir=_out_dir(args))
    snap, pruned, reports_pruned = run.snapshot, run.pruned, run.reports_pruned
    payload = {"snapshot": snap.as_dict(), "pruned": pruned, "retention_days": args.retention_days,
               "reports_pruned": reports_pruned, "report_retention_days": args.report_retention_days}
    replicas = "".join(f"; {name}: {status}" for name, status in snap.replicas.items())
    _print(args, payload, f"snapshot {snap.id} at {snap.taken_at:%Y-%m-%d %H:%M:%S %Z}: {snap.rows_written:,} rows "
                          f"in {snap.capture_ms} ms{replicas}; {pruned} snapshot(s) older than {args.retention_days} "
                          f"days removed; {reports_pruned['reports']} report(s) older than "
                          f"{args.report_retention_days} days removed")
    return 0


def _cmd_report(args: argparse.Namespace, settings: Any) -> int:
    from csl.db import Database
    from csl.reports import ReportParams, make_report, replicas_of

    params = ReportParams(window=args.window, top=args.top, regression_pct=args.regression_pct,
                          min_calls=args.min_calls, min_cost_drop_pct=args.min_cost_drop_pct,
                          advise_queries=args.advise_queries, unused_index_days=args.unused_index_days,
                          advisor_role=args.advisor_role, exact_bloat_tables=tuple(args.exact_bloat or ()))
    out = _out_dir(args)
    run_key = cli_run_key()
    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        result = make_report(conn, params, run_key=run_key, out_dir=out, advise_with_hypopg=not args.no_hypopg,
                             replicas=replicas_of(db), retention_days=args.report_retention_days)
    summary, meta = result.summary, result.meta
    recs = result.report["recommendations"]
    lines = [f"report {result.id} ({run_key}): window {meta['window']} "
             f"{meta['window_start']:%Y-%m-%d %H:%M} → {meta['window_end']:%Y-%m-%d %H:%M %Z}"
             if meta["window_start"] else f"report {result.id} ({run_key})",
             *[f"note: {n}" for n in meta["notes"]],
             (f"{summary['queries']:,} queries, {summary['db_time_ms']:,.0f} ms, {summary['regressions']} regressions, "
              f"{summary['missing_index_advice']} index advice, {summary['recommendations']} recommendations "
              f"({summary['high']} high)"),
             *[f"  [{r['severity']}] {r['kind']} {r['target']}: {r['message']}"
               + (f"\n      {r['statement']}" if r["statement"] else "") for r in recs[:25]],
             f"written to {result.path}/index.html ({result.html_bytes:,} bytes) in {result.duration_s} s"]
    payload = {"id": result.id, "run_key": run_key, "path": result.path, "summary": summary, "meta": meta,
               "recommendations": recs, "duration_s": result.duration_s}
    _print(args, payload, "\n".join(lines))
    return 0


def _role(text: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", text):
        raise argparse.ArgumentTypeError(f"expected a role name, got {text!r}")
    return text


def _report_retention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-retention-days", type=number(int, 1, 3650), default=90,
                   help="remove stored reports (and their folders) older than this (default 90)")


def add_cli(sub: Any) -> None:
    """Register ``snapshot`` and ``report`` on the ``csl`` command's subparsers."""
    p = sub.add_parser("snapshot", help="copy the statistics (queries, tables, indexes, sessions) into csl_ops")
    p.add_argument("--retention-days", type=number(int, 1, 3650), default=30,
                   help="remove snapshots older than this (default 30)")
    _report_retention(p)
    p.add_argument("--out", help="the reports' folder, for their retention (default $CSL_REPORTS_DIR or ./csl_reports)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_snapshot)

    p = sub.add_parser("report", help="performance report over a window: HTML + CSV/JSON, stored in csl_ops")
    p.add_argument("--window", type=_window, default="24h", help="90m, 24h, 7d … (default 24h)")
    p.add_argument("--out", help="folder for the report's files (default $CSL_REPORTS_DIR or ./csl_reports)")
    p.add_argument("--top", type=number(int, 1, 500), default=15, help="rows per top-queries table")
    p.add_argument("--regression-pct", type=number(float, 1, 10_000), default=50.0,
                   help="flag a query whose mean time grew by at least this much vs the previous window")
    p.add_argument("--min-calls", type=number(int, 1, 10**9), default=20,
                   help="calls in both windows for a regression to count")
    p.add_argument("--min-cost-drop-pct", type=number(float, 1, 100), default=50.0,
                   help="HypoPG: suggest an index only when the plan cost drops this much")
    p.add_argument("--advise-queries", type=number(int, 0, 100), default=10,
                   help="HypoPG: how many of the slowest queries to cost")
    p.add_argument("--unused-index-days", type=number(float, 0.001, 3650), default=7.0,
                   help="days of statistics (primary and every replica) without a scan before an index is "
                        "called unused (default 7)")
    p.add_argument("--advisor-role", type=_role, default="csl_advisor",
                   help="HypoPG plans query texts as this role, which must not be able to write (default csl_advisor)")
    _report_retention(p)
    p.add_argument("--exact-bloat", nargs="+", metavar="SCHEMA.TABLE", type=_qualified_table,
                   help="pgstattuple_approx on these tables (reads them: on request only)")
    p.add_argument("--no-hypopg", action="store_true", help="skip the missing-index advice")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_report)
