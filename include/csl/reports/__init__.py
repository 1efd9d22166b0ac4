"""Performance reports: statistics snapshots, deltas over a window, analysis with verified
index advice, and a self-contained HTML page (+ CSV/JSON) stored in ``csl_ops`` and on disk.

    with psycopg.connect(url, autocommit=True) as conn:
        snapshot = reports.capture(conn)                        # hourly, cheap
        result = reports.make_report(conn, reports.ReportParams(window="24h"),
                                     run_key="cli__…", out_dir=Path("reports"))
        frames = reports.to_frames(result["report"])            # pandas, for notebooks

Command line: ``python -m csl snapshot`` and ``python -m csl report --window 24h --out DIR``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import psycopg

from csl.reports.analysis import ReportParams, ReportParamsError, analyse, parse_window
from csl.reports.render import columns_of, render_html, to_frames, to_json, write_files
from csl.reports.snapshot import MARK, Snapshot, capture, prune

__all__ = [
    "ReportParams",
    "ReportParamsError",
    "Snapshot",
    "analyse",
    "capture",
    "list_reports",
    "make_report",
    "parse_window",
    "prune",
    "render_html",
    "safe_name",
    "stored_report",
    "to_frames",
]

log = logging.getLogger("csl.reports")

_STORE = """
INSERT INTO csl_ops.perf_reports (run_key, window_start, window_end, snapshot_id, baseline_snapshot_id,
                                  params, summary, data, html, path)
VALUES (%(run_key)s, %(window_start)s, %(window_end)s, %(snapshot_id)s, %(baseline)s, %(params)s, %(summary)s,
        %(data)s, %(html)s, %(path)s)
ON CONFLICT (run_key) DO UPDATE
SET created_at = now(), window_start = excluded.window_start, window_end = excluded.window_end,
    snapshot_id = excluded.snapshot_id, baseline_snapshot_id = excluded.baseline_snapshot_id,
    params = excluded.params, summary = excluded.summary, data = excluded.data, html = excluded.html,
    path = excluded.path
RETURNING id
"""


def safe_name(run_key: str) -> str:
    """A folder name for a run key (Airflow run ids contain ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_key).strip("_") or "report"


def make_report(conn: psycopg.Connection, params: ReportParams | None = None, *, run_key: str,
                out_dir: Path | None = None, snapshot_id: int | None = None,
                advise_with_hypopg: bool = True) -> dict[str, Any]:
    """Snapshot (unless ``snapshot_id`` ends the window), analyse, render; store the page and
    every table in ``csl_ops.perf_reports`` (a rerun with the same ``run_key`` replaces it) and,
    with ``out_dir``, write ``out_dir/<run_key>/index.html``, ``report.json`` and one CSV per table.

    Returns ``{"id", "path", "summary", "meta", "report", "duration_s"}``.
    """
    started = time.perf_counter()
    report = analyse(conn, params, snapshot_id=snapshot_id, advise_with_hypopg=advise_with_hypopg)
    page = render_html(report)
    folder = None
    if out_dir is not None:
        folder = Path(out_dir) / safe_name(run_key)
        write_files(report, page, folder)
    meta = report["meta"]
    with conn.transaction():
        report_id = conn.execute(MARK + _STORE, {
            "run_key": run_key, "window_start": meta["window_start"] or meta["window_end"],
            "window_end": meta["window_end"], "snapshot_id": meta["snapshot_id"],
            "baseline": meta["baseline_snapshot_id"], "params": json.dumps(meta["params"]),
            "summary": json.dumps(report["summary"], default=str),
            "data": to_json({"meta": meta, "tables": report["tables"],
                             "columns": {name: columns_of(rows) for name, rows in report["tables"].items()}}),
            "html": page,
            "path": str(folder) if folder else None}).fetchone()[0]
    duration = round(time.perf_counter() - started, 2)
    log.info("report %s (%s): %s in %.1fs", report_id, run_key, report["summary"], duration)
    return {"id": report_id, "path": str(folder) if folder else None, "summary": report["summary"],
            "meta": meta, "report": report, "duration_s": duration, "html_bytes": len(page.encode())}


def list_reports(conn: psycopg.Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest reports: id, run key, window, summary (no page)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(MARK + "SELECT id, run_key, created_at, window_start, window_end, summary FROM csl_ops.perf_reports"
                    " ORDER BY created_at DESC, id DESC LIMIT %s", (limit,))
        return cur.fetchall()


def stored_report(conn: psycopg.Connection, *, report_id: int | None = None,
                  run_key: str | None = None) -> dict[str, Any] | None:
    """One stored report (``html`` and ``data`` included), by id or run key."""
    if (report_id is None) == (run_key is None):
        raise ValueError("give exactly one of report_id and run_key")
    column, value = ("id", report_id) if report_id is not None else ("run_key", run_key)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(MARK + f"SELECT id, run_key, created_at, window_start, window_end, summary, data, html, path"
                    f" FROM csl_ops.perf_reports WHERE {column} = %s", (value,))
        return cur.fetchone()

