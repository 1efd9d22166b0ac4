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
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.exceptions import AirflowSkipException

from csl_airflow.base import CslBaseOperator

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
    """Where report folders go (``csl.reports.reports_dir``)."""
    from csl.reports import reports_dir as where

    return where()


class ReportLink(BaseOperatorLink):
    """The task's report, inside the Airflow UI's host (served by the csl reports app)."""

    name = "Performance report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return (f"{_base_url()}{REPORTS_URL_PREFIX}/runs/{quote(ti_key.dag_id, safe='')}/"
                f"{quote(ti_key.run_id, safe='')}")


class PerfSnapshotOperator(CslBaseOperator):
    """Takes one statistics snapshot (cheap; the read replica's index scans too, when
    ``csl_db_replica`` is set) and removes snapshots past ``retention_days`` and stored reports
    (rows and folders) past ``report_retention_days`` (``csl.reports.snapshot_and_prune``)."""

    template_fields: Sequence[str] = ("retention_days", "report_retention_days")
    ui_color = "#eef6ff"

    def __init__(self, *, retention_days: int = 30, report_retention_days: int = 90, out_dir: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days
        self.report_retention_days = report_retention_days
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.reports import replicas_of, snapshot_and_prune

        with self.database() as db:
            with db.connect_direct("primary") as conn:
                run = snapshot_and_prune(conn, replicas=replicas_of(db), retention_days=self.retention_days,
                                         report_retention_days=self.report_retention_days,
                                         out_dir=Path(self.out_dir) if self.out_dir else reports_dir())
            self.record(db, context, status="success", outcome=run.outcome())
        snap = run.snapshot
        log.info("snapshot %s: %d rows in %d ms (replicas: %s), %d old snapshot(s) and %d old report(s) removed",
                 snap.id, snap.rows_written, snap.capture_ms, snap.replicas or "none", run.pruned,
                 run.reports_pruned["reports"])
        return run.outcome()


class PerfReportOperator(CslBaseOperator):
    """Makes the report over ``window_hours`` ending at the snapshot task's snapshot (``snapshot``:
    that task's result); stores it in ``csl_ops.perf_reports`` and under :func:`reports_dir`;
    links to it.

    ``make_report``: ``always``, ``never`` or ``auto`` (a manual run always reports; a
    scheduled run only when its interval ends at ``report_hour_utc``: ``csl.reports.report_due``)."""

    template_fields: Sequence[str] = ("snapshot", "window_hours", "top", "regression_pct", "min_calls",
                                      "min_cost_drop_pct", "advise_queries", "exact_bloat_tables", "make_report",
                                      "report_hour_utc", "unused_index_days", "advisor_role", "report_retention_days")
    operator_extra_links = (ReportLink(),)
    ui_color = "#fff4e5"

    def __init__(self, *, snapshot: Any = None, window_hours: float = 24, top: int = 15, regression_pct: float = 50,
                 min_calls: int = 20, min_cost_drop_pct: float = 50, advise_queries: int = 10,
                 exact_bloat_tables: Sequence[str] | None = (), make_report: str = "always",
                 report_hour_utc: int = 5, unused_index_days: float = 7, advisor_role: str = "csl_advisor",
                 report_retention_days: int = 90, out_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.unused_index_days, self.advisor_role = unused_index_days, advisor_role
        self.report_retention_days = report_retention_days
        self.window_hours, self.top, self.regression_pct = window_hours, top, regression_pct
        self.min_calls, self.min_cost_drop_pct, self.advise_queries = min_calls, min_cost_drop_pct, advise_queries
        self.make_report, self.report_hour_utc = make_report, report_hour_utc
        self.exact_bloat_tables = exact_bloat_tables
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.reports import ReportParams, make_report, replicas_of, report_due

        kind = getattr(context.get("dag_run"), "run_type", None)
        due, why = report_due(self.make_report, scheduled=str(getattr(kind, "value", kind) or "") == "scheduled",
                              interval_end=context.get("data_interval_end") or context.get("logical_date"),
                              report_hour_utc=self.report_hour_utc)
        if not due:
            raise AirflowSkipException(f"no report this run: {why}")
        params = ReportParams(window=float(self.window_hours), top=self.top, regression_pct=self.regression_pct,
                              min_calls=self.min_calls, min_cost_drop_pct=self.min_cost_drop_pct,
                              advise_queries=self.advise_queries, unused_index_days=self.unused_index_days,
                              advisor_role=self.advisor_role, exact_bloat_tables=tuple(self.exact_bloat_tables or ()))
        ti = context["ti"]
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                result = make_report(conn, params, run_key=f"{ti.dag_id}/{ti.run_id}",
                                     out_dir=Path(self.out_dir) if self.out_dir else reports_dir(),
                                     snapshot_id=(self.snapshot or {}).get("snapshot_id"), replicas=replicas_of(db),
                                     retention_days=self.report_retention_days)
            self.record(db, context, status="success", outcome=result.outcome())
        ti.xcom_push(key="report_id", value=result.id)
        log.info("report %s: %s; %s", result.id, result.summary, "; ".join(result.meta["notes"]) or "no notes")
        for rec in result.report["recommendations"][:20]:
            log.info("[%s] %s %s: %s", rec["severity"], rec["kind"], rec["target"], rec["message"])
        return result.outcome()


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
