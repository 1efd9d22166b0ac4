"""Performance reports: statistics snapshots, deltas over a window, analysis with verified
index advice, and a self-contained HTML page (+ CSV/JSON) stored in ``csl_ops`` and on disk.

    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        replicas = reports.replicas_of(db)                      # {"replica": connect} when configured
        snapshot = reports.capture(conn, replicas=replicas)     # hourly, cheap
        result = reports.make_report(conn, reports.ReportParams(window="24h"), replicas=replicas,
                                     run_key="cli__…", out_dir=Path("reports"))
        frames = reports.to_frames(result.report)               # pandas, for notebooks

Stored reports are kept ``retention_days`` (90 by default): every snapshot and report run
deletes older ones and removes their folders (:func:`prune_reports`).

Command line: ``python -m csl snapshot`` and ``python -m csl report --window 24h --out DIR``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from csl.config import reports_root
from csl.reports.analysis import ReportParams, ReportParamsError, analyse, parse_window
from csl.reports.render import REPORT_FILES, columns_of, render_html, to_frames, to_json, write_files
from csl.reports.snapshot import MARK, ReplicaConnect, Snapshot, capture, prune
from csl.sqlfiles import load

__all__ = [
    "ReportParams",
    "ReportParamsError",
    "ReportResult",
    "Snapshot",
    "SnapshotRun",
    "analyse",
    "capture",
    "list_reports",
    "make_report",
    "parse_window",
    "prune",
    "prune_reports",
    "render_html",
    "replicas_of",
    "report_due",
    "reports_dir",
    "safe_name",
    "snapshot_and_prune",
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


def replicas_of(db: Any) -> dict[str, ReplicaConnect]:
    """The replicas a snapshot reads, from a :class:`csl.db.Database`: ``{"replica": connect}``
    when ``DATABASE_READ_REPLICA_URL`` is set, else none."""
    if not db.settings.replica_url:
        return {}
    return {"replica": lambda: db.connect_direct("replica")}


REPORT_RETENTION_DAYS = 90


def make_report(conn: psycopg.Connection, params: ReportParams | None = None, *, run_key: str,
                out_dir: Path | None = None, snapshot_id: int | None = None,
                advise_with_hypopg: bool = True, replicas: Mapping[str, ReplicaConnect] | None = None,
                retention_days: int = REPORT_RETENTION_DAYS) -> ReportResult:
    """Snapshot (unless ``snapshot_id`` ends the window; reading ``replicas`` too), analyse,
    render; store the page and every table in ``csl_ops.perf_reports`` (a rerun with the same
    ``run_key`` replaces it) and, with ``out_dir``, write ``out_dir/<run_key>/index.html``,
    ``report.json`` and one CSV per table. Then stored reports older than ``retention_days`` go
    (:func:`prune_reports`).

    Returns a :class:`ReportResult`.
    """
    _check_retention(retention_days)
    started = time.perf_counter()
    report = analyse(conn, params, snapshot_id=snapshot_id, advise_with_hypopg=advise_with_hypopg, replicas=replicas)
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
    pruned = prune_reports(conn, retention_days=retention_days, out_dir=out_dir)
    duration = round(time.perf_counter() - started, 2)
    log.info("report %s (%s): %s in %.1fs", report_id, run_key, report["summary"], duration)
    return ReportResult(id=report_id, path=str(folder) if folder else None, summary=report["summary"], meta=meta,
                        report=report, duration_s=duration, html_bytes=len(page.encode()), pruned=pruned)


@dataclass(frozen=True)
class ReportResult:
    """A stored report: its id, folder (when written to disk), summary, meta (window, notes,
    params), the whole analysed report, how long it took, the page's size, what was pruned."""

    id: int
    path: str | None
    summary: dict[str, Any]
    meta: dict[str, Any]
    report: dict[str, Any]
    duration_s: float
    html_bytes: int
    pruned: dict[str, int]

    def outcome(self) -> dict[str, Any]:
        """The figures a run record keeps (the report itself is stored in ``csl_ops.perf_reports``)."""
        return {"report_id": self.id, "path": self.path, "summary": self.summary, "notes": self.meta["notes"],
                "duration_s": self.duration_s, "html_bytes": self.html_bytes, "pruned": self.pruned}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "summary": self.summary, "meta": self.meta, "report": self.report,
                "duration_s": self.duration_s, "html_bytes": self.html_bytes, "pruned": self.pruned}


@dataclass(frozen=True)
class SnapshotRun:
    """One snapshot, and what retention removed in the same run."""

    snapshot: Snapshot
    pruned: int
    reports_pruned: dict[str, int]

    def outcome(self) -> dict[str, Any]:
        snap = self.snapshot
        return {"snapshot_id": snap.id, "taken_at": snap.taken_at.isoformat(), "rows_written": snap.rows_written,
                "capture_ms": snap.capture_ms, "replicas": snap.replicas, "pruned": self.pruned,
                "reports_pruned": self.reports_pruned}


def snapshot_and_prune(conn: psycopg.Connection, *, replicas: Mapping[str, ReplicaConnect] | None = None,
                       retention_days: int = 30, report_retention_days: int = REPORT_RETENTION_DAYS,
                       out_dir: Path | None = None) -> SnapshotRun:
    """Take one snapshot (the replicas' index scans too), then remove snapshots older than
    ``retention_days`` and stored reports (rows and folders) older than ``report_retention_days``."""
    _check_retention(retention_days)
    _check_retention(report_retention_days)
    snap = capture(conn, replicas=replicas)
    return SnapshotRun(snap, prune(conn, retention_days=retention_days),
                       prune_reports(conn, retention_days=report_retention_days, out_dir=out_dir))


def reports_dir() -> Path:
    """Where report folders go: ``$CSL_REPORTS_DIR/performance``, else
    ``$AIRFLOW_HOME/csl_reports/performance`` (``./csl_reports/performance`` without either)."""
    return reports_root() / "performance"


REPORT_MODES = ("auto", "always", "never")


def report_due(mode: str, *, scheduled: bool, interval_end: datetime | None, report_hour_utc: int) -> tuple[bool, str]:
    """Whether this run makes a report, and why: ``always`` / ``never``; ``auto``: a manual run
    always, a scheduled run only when its interval ends at ``report_hour_utc``."""
    if mode not in REPORT_MODES:
        raise ReportParamsError(f"make_report: expected one of {', '.join(REPORT_MODES)}, got {mode!r}")
    if isinstance(report_hour_utc, bool) or not isinstance(report_hour_utc, int) or not 0 <= report_hour_utc <= 23:
        raise ReportParamsError(f"report_hour_utc: expected an hour 0..23, got {report_hour_utc!r}")
    if mode == "never":
        return False, "make_report is 'never'"
    if mode == "always" or not scheduled:
        return True, f"make_report {mode!r}, {'scheduled' if scheduled else 'manual'} run"
    if interval_end is not None and interval_end.hour != report_hour_utc:
        return False, (f"scheduled run ending {interval_end:%H:%M} UTC; the report is made at "
                       f"{report_hour_utc:02d}:00 UTC")
    return True, f"scheduled run at the report hour {report_hour_utc:02d}:00 UTC"


def _check_retention(days: Any) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise ReportParamsError(f"retention_days: expected a whole number of days in 1..3650, got {days!r}")


def _is_report_folder(path: Path) -> bool:
    """A folder this module wrote: a real directory holding index.html and report.json and
    nothing but report files (never a symlink, never anything else — a path read from the
    database is not trusted to point at one)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        entries = list(path.iterdir())
    except OSError:
        return False
    names = {e.name for e in entries}
    return ({"index.html", "report.json"} <= names
            and all(e.is_file() and not e.is_symlink() and REPORT_FILES.fullmatch(e.name) for e in entries))


def _remove_folder(path: Path) -> bool:
    """Remove a report folder file by file (never a recursive delete); False if it is not one."""
    if not _is_report_folder(path):
        return False
    for entry in path.iterdir():
        entry.unlink()
    path.rmdir()
    return True


def prune_reports(conn: psycopg.Connection, *, retention_days: int = REPORT_RETENTION_DAYS,
                  out_dir: Path | None = None) -> dict[str, int]:
    """Delete stored reports older than ``retention_days`` and remove their folders.

    A deleted report's folder is queued in ``csl_ops.perf_report_purges`` in the same
    transaction and removed here (a run that dies in between leaves it queued for the next one;
    a folder that does not exist on this machine is dequeued). With ``out_dir``, report folders
    directly in it whose files are older than the retention go too, whether or not the database
    knows them (another database's, or reports deleted by a migration). Only folders holding
    nothing but report files are ever removed. Returns ``{"reports", "folders"}`` counts.
    """
    _check_retention(retention_days)
    with conn.transaction():
        deleted = conn.execute(MARK + load("reports/report_retention.sql"), {"days": retention_days}).fetchone()[0]
    folders = 0
    queued = conn.execute(MARK + "SELECT id, path FROM csl_ops.perf_report_purges ORDER BY id").fetchall()
    for purge_id, path in queued:
        folder = Path(path)
        if _remove_folder(folder):
            folders += 1
        elif folder.exists():
            log.warning("report folder %s queued for removal holds more than a report: left alone", folder)
        conn.execute(MARK + "DELETE FROM csl_ops.perf_report_purges WHERE id = %s", (purge_id,))
    if out_dir is not None and Path(out_dir).is_dir():
        cutoff = time.time() - retention_days * 86400
        for folder in Path(out_dir).iterdir():
            try:
                old = _is_report_folder(folder) and max(e.stat().st_mtime for e in folder.iterdir()) < cutoff
            except (OSError, ValueError):
                continue
            if old and _remove_folder(folder):
                folders += 1
    if deleted or folders:
        log.info("report retention (%d days): %d stored report(s) deleted, %d folder(s) removed", retention_days,
                 deleted, folders)
    return {"reports": deleted, "folders": folders}


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

