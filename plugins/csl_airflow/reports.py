"""Performance reports in Airflow: the snapshot and report operators, the operator extra link
to a run's report, and the FastAPI app (listed in the UI's navigation) that lists and shows
the reports stored in ``csl_ops.perf_reports`` — behind Airflow's own authentication: every
route needs a logged-in user allowed to read ``csl_performance_report``'s runs (401 without a
token, 403 without the permission).

The analysis lives in ``csl.reports``; this module only turns connections, Params and task
context into calls to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from csl_airflow.base import CslBaseOperator, _as_list, _int_param

__all__ = ["DAG_ID", "REPORTS_URL_PREFIX", "PerfReportOperator", "PerfSnapshotOperator", "ReportLink",
           "create_app", "external_view", "fastapi_app_entry"]

log = logging.getLogger("csl.airflow.reports")

DAG_ID = "csl_performance_report"
REPORTS_URL_PREFIX = "/csl-reports"


def _base_url() -> str:
    try:
        from airflow.configuration import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:  # noqa: BLE001 - a worker without the core config: a relative link still works
        return ""


def reports_dir() -> Path:
    """Where report files go: ``$CSL_REPORTS_DIR/performance`` or ``$AIRFLOW_HOME/csl_reports/performance``."""
    root = os.environ.get("CSL_REPORTS_DIR") or Path(os.environ.get("AIRFLOW_HOME", ".")) / "csl_reports"
    return Path(root) / "performance"


class ReportLink(BaseOperatorLink):
    """The task's report, inside the Airflow UI's host (served by the csl reports app)."""

    name = "Performance report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return (f"{_base_url()}{REPORTS_URL_PREFIX}/runs/{quote(ti_key.dag_id, safe='')}/"
                f"{quote(ti_key.run_id, safe='')}")


def _days(value: Any, name: str) -> int:
    days = _int_param(value, name)
    if not 1 <= days <= 3650:
        raise AirflowFailException(f"{name}: expected 1..3650 days, got {days}")
    return days


class PerfSnapshotOperator(CslBaseOperator):
    """Takes one statistics snapshot (cheap; the read replica's index scans too, when
    ``csl_db_replica`` is set) and removes snapshots past ``retention_days`` and stored reports
    (rows and folders) past ``report_retention_days``."""

    template_fields: Sequence[str] = ("retention_days", "report_retention_days")
    ui_color = "#eef6ff"

    def __init__(self, *, retention_days: Any = 30, report_retention_days: Any = 90, out_dir: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days
        self.report_retention_days = report_retention_days
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.reports import capture, prune, prune_reports, replicas_of

        days = _days(self.retention_days, "retention_days")
        report_days = _days(self.report_retention_days, "report_retention_days")
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                snap = capture(conn, replicas=replicas_of(db))
                pruned = prune(conn, retention_days=days)
                reports_pruned = prune_reports(conn, retention_days=report_days,
                                               out_dir=Path(self.out_dir) if self.out_dir else reports_dir())
            outcome = {"snapshot_id": snap.id, "taken_at": snap.taken_at.isoformat(), "rows_written": snap.rows_written,
                       "capture_ms": snap.capture_ms, "replicas": snap.replicas, "pruned": pruned,
                       "reports_pruned": reports_pruned}
            self.record(db, context, status="success", outcome=outcome)
        log.info("snapshot %s: %d rows in %d ms (replicas: %s), %d old snapshot(s) and %d old report(s) removed",
                 snap.id, snap.rows_written, snap.capture_ms, snap.replicas or "none", pruned, reports_pruned["reports"])
        return outcome


class PerfReportOperator(CslBaseOperator):
    """Makes the report over ``window_hours`` ending at the snapshot task's snapshot; stores it
    in ``csl_ops.perf_reports`` and under :func:`reports_dir`; links to it.

    ``make_report``: ``always``, ``never`` or ``auto`` (a manual run always reports; a
    scheduled run only when its interval ends at ``report_hour_utc``)."""

    template_fields: Sequence[str] = ("window_hours", "top", "regression_pct", "min_calls", "min_cost_drop_pct",
                                      "advise_queries", "exact_bloat_tables", "make_report", "report_hour_utc",
                                      "unused_index_days", "advisor_role", "report_retention_days")
    operator_extra_links = (ReportLink(),)
    ui_color = "#fff4e5"

    def __init__(self, *, snapshot_task_id: str = "snapshot", window_hours: Any = 24, top: Any = 15,
                 regression_pct: Any = 50, min_calls: Any = 20, min_cost_drop_pct: Any = 50, advise_queries: Any = 10,
                 exact_bloat_tables: Any = (), make_report: Any = "always", report_hour_utc: Any = 5,
                 unused_index_days: Any = 7, advisor_role: Any = "csl_advisor", report_retention_days: Any = 90,
                 out_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unused_index_days, self.advisor_role = unused_index_days, advisor_role
        self.report_retention_days = report_retention_days
        self.snapshot_task_id = snapshot_task_id
        self.window_hours, self.top, self.regression_pct = window_hours, top, regression_pct
        self.min_calls, self.min_cost_drop_pct, self.advise_queries = min_calls, min_cost_drop_pct, advise_queries
        self.make_report, self.report_hour_utc = make_report, report_hour_utc
        self.exact_bloat_tables = exact_bloat_tables
        self.out_dir = out_dir

    def _due(self, context: Any) -> tuple[bool, str]:
        mode = str(self.make_report)
        if mode == "never":
            return False, "make_report is 'never'"
        kind = getattr(context.get("dag_run"), "run_type", None)
        run_type = str(getattr(kind, "value", kind) or "").lower()  # DagRunType (a str enum) or its value
        if mode == "always" or run_type != "scheduled":
            return True, f"make_report {mode!r}, {run_type or 'manual'} run"
        end = context.get("data_interval_end") or context.get("logical_date")
        hour = _int_param(self.report_hour_utc, "report_hour_utc")
        if end is not None and end.hour != hour:
            return False, f"scheduled run ending {end:%H:%M} UTC; the report is made at {hour:02d}:00 UTC"
        return True, f"scheduled run at the report hour {hour:02d}:00 UTC"

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.reports import ReportParams, ReportParamsError, make_report, replicas_of

        due, why = self._due(context)
        if not due:
            raise AirflowSkipException(f"no report this run: {why}")
        try:
            params = ReportParams(window=float(self.window_hours), top=_int_param(self.top, "top"),
                                  regression_pct=float(self.regression_pct),
                                  min_calls=_int_param(self.min_calls, "min_calls"),
                                  min_cost_drop_pct=float(self.min_cost_drop_pct),
                                  advise_queries=_int_param(self.advise_queries, "advise_queries"),
                                  unused_index_days=float(self.unused_index_days),
                                  advisor_role=str(self.advisor_role),
                                  exact_bloat_tables=tuple(_as_list(self.exact_bloat_tables)
                                                           if self.exact_bloat_tables not in (None, "", "null", "[]")
                                                           else ()))
        except (ReportParamsError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        report_days = _days(self.report_retention_days, "report_retention_days")
        ti = context["ti"]
        snap = ti.xcom_pull(task_ids=self.snapshot_task_id) or {}
        key = f"{ti.dag_id}/{ti.run_id}"
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                result = make_report(conn, params, run_key=key, out_dir=Path(self.out_dir) if self.out_dir else reports_dir(),
                                     snapshot_id=snap.get("snapshot_id"), replicas=replicas_of(db),
                                     retention_days=report_days)
            outcome = {"report_id": result["id"], "path": result["path"], "summary": result["summary"],
                       "notes": result["meta"]["notes"], "duration_s": result["duration_s"],
                       "html_bytes": result["html_bytes"], "pruned": result["pruned"]}
            self.record(db, context, status="success", outcome=outcome)
        ti.xcom_push(key="report_id", value=result["id"])
        log.info("report %s: %s; %s", result["id"], result["summary"], "; ".join(result["meta"]["notes"]) or "no notes")
        for rec in result["report"]["recommendations"][:20]:
            log.info("[%s] %s %s: %s", rec["severity"], rec["kind"], rec["target"], rec["message"])
        return outcome


# -- the UI: a FastAPI app mounted by the api-server -------------------------------------------

external_view = {
    "name": "Performance reports",
    "href": f"{REPORTS_URL_PREFIX}/",
    "destination": "nav",
    "category": "browse",
    "url_route": "csl-performance-reports",
}

_PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; "
             "base-uri 'none'; form-action 'none'")


def create_app():
    """The reports app; every route requires Airflow authentication and read access to the
    report DAG's runs (``requires_access_dag``, the same check the REST API makes)."""
    import html

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse

    app = FastAPI(title="csl performance reports", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))])

    def connect():
        from csl.db import Database
        from csl_airflow.connections import settings_from_connections

        db = Database(settings_from_connections().require_database())
        return db, db.connect_direct("primary")

    def fetch(**where: Any) -> dict[str, Any]:
        from csl.reports import stored_report

        db, conn = connect()
        try:
            row = stored_report(conn, **where)
        finally:
            conn.close()
            db.close()
        if row is None:
            raise HTTPException(status_code=404, detail="no such report")
        return row

    def page(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": _PAGE_CSP,
                                                               "X-Content-Type-Options": "nosniff"})

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        from csl.reports import list_reports

        db, conn = connect()
        try:
            rows = list_reports(conn)
        finally:
            conn.close()
            db.close()
        esc = lambda v: html.escape(str(v))
        items = "".join(
            f'<tr><td><a href="{r["id"]}/">report {r["id"]}</a></td><td>{esc(r["run_key"])}</td>'
            f'<td>{r["window_start"]:%Y-%m-%d %H:%M} → {r["window_end"]:%Y-%m-%d %H:%M} UTC</td>'
            f'<td class="num">{esc(r["summary"].get("recommendations", "–"))}</td>'
            f'<td class="num">{esc(r["summary"].get("high", "–"))}</td>'
            f'<td class="num">{esc(r["summary"].get("regressions", "–"))}</td>'
            f'<td class="num">{esc(r["summary"].get("missing_index_advice", "–"))}</td></tr>' for r in rows)
        return page(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Performance reports</title>
<style>body{{font:14px system-ui,sans-serif;margin:16px 24px;color:#111827}}table{{border-collapse:collapse}}
th,td{{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left}}td.num{{text-align:right}}</style></head>
<body><h1>Performance reports</h1><p>{len(rows)} newest reports of <code>{DAG_ID}</code> and the CLI.</p>
<table id="reports"><thead><tr><th>report</th><th>run</th><th>window</th><th>recommendations</th><th>high</th>
<th>regressions</th><th>index advice</th></tr></thead><tbody>{items or '<tr><td colspan="7">no report yet</td></tr>'}
</tbody></table></body></html>""")

    @app.get("/runs/{dag_id}/{run_id:path}")
    def by_run(dag_id: str, run_id: str) -> RedirectResponse:
        row = fetch(run_key=f"{dag_id}/{run_id}")
        return RedirectResponse(f"{REPORTS_URL_PREFIX}/{row['id']}/", status_code=307)

    @app.get("/{report_id}")
    def report_no_slash(report_id: int) -> RedirectResponse:
        return RedirectResponse(f"{REPORTS_URL_PREFIX}/{report_id}/", status_code=307)

    @app.get("/{report_id}/", response_class=HTMLResponse)
    def report(report_id: int) -> HTMLResponse:
        return page(fetch(report_id=report_id)["html"])

    @app.get("/{report_id}/report.json")
    def report_json(report_id: int) -> JSONResponse:
        row = fetch(report_id=report_id)
        data = {k: v for k, v in row["data"].items() if k != "columns"}
        return JSONResponse({"id": row["id"], "run_key": row["run_key"], "summary": row["summary"], **data})

    @app.get("/{report_id}/{table}.csv")
    def report_csv(report_id: int, table: str) -> PlainTextResponse:
        from csl.reports.render import table_csv

        data = fetch(report_id=report_id)["data"]
        tables = data.get("tables", {})
        if table not in tables:
            raise HTTPException(status_code=404, detail=f"report {report_id} has no table {table!r}")
        rows = tables[table]
        text = table_csv(rows, data.get("columns", {}).get(table)) if rows else ""
        return PlainTextResponse(text, media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{table}.csv"'})

    return app


class LazyReportsApp:
    """The ASGI app the api-server mounts, built on its first request: every Airflow process
    imports plugins (and DAG files import this package), only the api-server serves it."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "csl_airflow.reports.LazyReportsApp"


def fastapi_app_entry() -> dict[str, Any]:
    return {"app": LazyReportsApp(), "url_prefix": REPORTS_URL_PREFIX, "name": "csl performance reports"}
