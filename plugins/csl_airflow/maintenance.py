"""Operators of ``csl_index_install`` and ``csl_db_maintenance`` (``csl.maintenance``): plan →
one mapped task per index or table → report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from csl_airflow.base import CslBaseOperator

__all__ = ["IndexBuildOperator", "IndexPlanOperator", "IndexReportOperator", "MaintenanceActOperator",
           "MaintenancePlanOperator", "MaintenanceReportOperator"]

log = logging.getLogger("csl.airflow.maintenance")


class IndexPlanOperator(CslBaseOperator):
    """Diffs the declared index catalog against ``pg_catalog`` (``csl.maintenance.indexes.plan_indexes``).

    Returns the items to build (one mapped build task each); empty when everything is ``ok`` or
    ``dry_run`` is set. The whole plan (with ``skip``/``leave`` items and reasons) goes to the
    log, XCom ``plan`` and ``summary``, and ``csl_ops.task_runs``. Unknown names in ``only`` are
    refused before any DDL.
    """

    template_fields: Sequence[str] = ("only", "dry_run")

    def __init__(self, *, only: Sequence[str] | None = (), dry_run: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.only = only
        self.dry_run = dry_run

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.maintenance import indexes

        with self.database() as db:
            with db.connect_direct("primary") as conn:
                plan = indexes.plan_indexes(conn, self.only)
            log.info("index plan%s:\n%s", " (dry run: nothing will be built)" if self.dry_run else "", plan.format())
            self.record(db, context, status="success", outcome={"summary": plan.summary, "dry_run": self.dry_run})
        context["ti"].xcom_push(key="plan", value=plan.as_dict()["plan"])
        context["ti"].xcom_push(key="summary", value=plan.summary)
        return [] if self.dry_run else [vars(item) for item in plan.to_build]


class IndexBuildOperator(CslBaseOperator):
    """Builds one planned index online (CONCURRENTLY, timeouts, lock retries, cleanup) and
    records it in ``csl_ops.index_builds``. Meant for ``.partial(...).expand(item=...)``."""

    template_fields: Sequence[str] = ("item", "lock_timeout_ms", "statement_timeout_s", "max_lock_retries")
    template_fields_renderers: ClassVar[dict[str, str]] = {"item": "json"}
    ui_color = "#fdf1d6"

    def __init__(self, *, item: Any, lock_timeout_ms: int = 2000, statement_timeout_s: int = 3600,
                 max_lock_retries: int = 3, lock_backoff_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_s = statement_timeout_s
        self.max_lock_retries = max_lock_retries
        self.lock_backoff_s = lock_backoff_s

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import indexes

        context["index_name"] = self.item["name"]  # for map_index_template
        with self.database() as db:
            try:
                result = indexes.build_planned(
                    lambda: db.connect_direct("primary"), self.item, run_id=context["ti"].run_id,
                    lock_timeout_ms=self.lock_timeout_ms, statement_timeout_s=self.statement_timeout_s,
                    max_lock_retries=self.max_lock_retries, backoff_s=self.lock_backoff_s)
            except indexes.IndexBuildError as exc:  # the report reads every build's outcome, failed ones too
                context["ti"].xcom_push(key="build", value=exc.result.as_dict())
                raise
        context["ti"].xcom_push(key="build", value=result.as_dict())
        log.info("%s %s in %d ms (%s bytes, %d attempt(s))", result.action, result.name, result.duration_ms,
                 result.size_bytes, result.attempts)
        return result.as_dict()


class IndexReportOperator(CslBaseOperator):
    """Summarises the run's builds (``csl.maintenance.indexes.report_run``: XCom ``report`` +
    ``csl_ops.task_runs``); fails if any build failed or never ran."""

    template_fields: Sequence[str] = ("summary", "builds", "dry_run")

    def __init__(self, *, summary: Any, builds: Any, dry_run: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.summary, self.builds, self.dry_run = summary, builds, dry_run

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import indexes

        report = indexes.report_run(self.summary, list(self.builds or ()), dry_run=self.dry_run)
        with self.database() as db:
            self.record(db, context, status="success" if report.ok else "failed", outcome=report.as_dict(),
                        error=", ".join(b["name"] for b in report.failed) or None)
        context["ti"].xcom_push(key="report", value=report.as_dict())
        report.raise_for_failures()
        for item in report.blocked:
            log.warning("%s not built: %s", item["name"], item["reason"])
        log.info("indexes: %d built, %d unknown left alone, %d blocked, plan %s", len(report.built),
                 len(report.unknown), len(report.blocked), report.plan)
        return report.as_dict()


class MaintenancePlanOperator(CslBaseOperator):
    """Gathers table evidence and chooses tonight's VACUUM/ANALYZE candidates, each with the
    reason it was chosen (``csl.maintenance.vacuum.plan_maintenance``). Returns them for one
    mapped action task each (none on ``dry_run``); XCom ``plan`` holds the whole plan,
    ``started_at`` when it was made (the night's time budget counts from it)."""

    template_fields: Sequence[str] = ("tables", "mode", "max_tables", "dead_ratio", "dry_run")

    def __init__(self, *, tables: Sequence[str] | None = (), mode: str = "auto", max_tables: int = 50,
                 dead_ratio: float = 0.1, dry_run: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tables, self.mode, self.max_tables = tables, mode, max_tables
        self.dead_ratio, self.dry_run = dead_ratio, dry_run

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.maintenance import vacuum

        policy = vacuum.Policy(mode=self.mode, dead_ratio=self.dead_ratio, max_tables=self.max_tables,
                               tables=tuple(self.tables or ()))
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                plan = vacuum.plan_maintenance(conn, policy)
            log.info("maintenance plan%s:\n%s", " (dry run: nothing will run)" if self.dry_run else "", plan.format())
            chosen = plan.as_dict()["chosen"]
            self.record(db, context, status="success",
                        outcome={"chosen": len(chosen), "skipped": plan.skipped, "dry_run": self.dry_run,
                                 "tables": [f"{c['schema']}.{c['table']} ({c['reason']})" for c in chosen]})
        context["ti"].xcom_push(key="plan", value={**plan.as_dict(), "dry_run": self.dry_run})
        context["ti"].xcom_push(key="started_at", value=plan.started_at)  # each action's budget counts from it
        return [] if self.dry_run else chosen


class MaintenanceActOperator(CslBaseOperator):
    """Runs one chosen action (``SKIP_LOCKED``, timeouts) unless the night's time budget, counted
    from the plan's ``started_at``, is spent; records before/after figures in
    ``csl_ops.maintenance_actions`` (``csl.maintenance.vacuum.carry_out``)."""

    template_fields: Sequence[str] = ("candidate", "started_at", "max_duration_s", "statement_timeout_s",
                                      "lock_timeout_ms")
    template_fields_renderers: ClassVar[dict[str, str]] = {"candidate": "json"}
    ui_color = "#e8eefc"

    def __init__(self, *, candidate: Any, started_at: Any, max_duration_s: float = 3600,
                 statement_timeout_s: int = 3600, lock_timeout_ms: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate, self.started_at = candidate, started_at
        self.max_duration_s = max_duration_s
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_ms = lock_timeout_ms

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import vacuum

        candidate = vacuum.candidate_from_dict(self.candidate)
        context["table_name"] = candidate.qualified  # for map_index_template
        with self.database() as db:
            result = vacuum.carry_out(lambda: db.connect_direct("primary"), candidate, run_id=context["ti"].run_id,
                                      budget=vacuum.Budget(float(self.started_at), float(self.max_duration_s)),
                                      statement_timeout_s=self.statement_timeout_s,
                                      lock_timeout_ms=self.lock_timeout_ms)
        context["ti"].xcom_push(key="action", value=result.as_dict())
        vacuum.raise_for_failure(candidate, result)
        log.info("%s %s: %s (%s)", candidate.action, candidate.qualified, result.status, result.error or "ok")
        return result.as_dict()


class MaintenanceReportOperator(CslBaseOperator):
    """Before/after summary of the night (``csl.maintenance.vacuum.report_night``: XCom ``report``
    + ``csl_ops.task_runs``); fails when an action failed or never ran."""

    template_fields: Sequence[str] = ("plan", "actions")

    def __init__(self, *, plan: Any, actions: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan, self.actions = plan, actions

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import vacuum

        report = vacuum.report_night(self.plan, list(self.actions or ()), dry_run=self.plan["dry_run"])
        with self.database() as db:
            self.record(db, context, status="failed" if report.failed else "success", outcome=report.as_dict(),
                        error=f"{report.failed} action(s) failed or never ran" if report.failed else None)
        context["ti"].xcom_push(key="report", value=report.as_dict())
        report.raise_for_failures()
        log.info("maintenance: %s; %d dead tuples removed", report.summary["by_status"],
                 report.summary["dead_tuples_removed"])
        return report.as_dict()
