"""Operators of ``csl_index_install`` and ``csl_db_maintenance`` (``csl.maintenance``): plan →
one mapped task per index or table → report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.sdk.exceptions import AirflowFailException

from csl_airflow.base import CslBaseOperator, _as_list, _int_param, _truthy

__all__ = ["IndexBuildOperator", "IndexPlanOperator", "IndexReportOperator", "MaintenanceActOperator",
           "MaintenancePlanOperator", "MaintenanceReportOperator"]

log = logging.getLogger("csl.airflow.maintenance")


class IndexPlanOperator(CslBaseOperator):
    """Diffs the declared index catalog against ``pg_catalog`` and returns the build plan.

    Returns the items to build (one mapped build task each); empty when everything is
    ``ok`` or ``dry_run`` is set. The whole plan (with ``skip``/``leave`` items and reasons)
    goes to the log, XCom ``plan`` and ``csl_ops.task_runs``. Unknown names in ``only`` are
    refused here, before any DDL.
    """

    template_fields: Sequence[str] = ("only", "dry_run")

    def __init__(self, *, only: Any = (), dry_run: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.only = only
        self.dry_run = dry_run

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.maintenance import indexes

        only = _as_list(self.only) if self.only else []
        full = indexes.load_catalog()
        try:
            chosen = indexes.select(full, only)
        except indexes.CatalogError as exc:
            raise AirflowFailException(str(exc)) from exc
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                plan = indexes.make_plan(indexes.diff(conn, chosen, full_catalog=full), chosen)
            summary = indexes.plan_summary(plan)
            dry_run = _truthy(self.dry_run)
            log.info("index plan%s:\n%s", " (dry run: nothing will be built)" if dry_run else "",
                     indexes.format_plan(plan))
            self.record(db, context, status="success", outcome={"summary": summary, "dry_run": dry_run})
        context["ti"].xcom_push(key="plan", value=[vars(item) for item in plan])
        context["ti"].xcom_push(key="summary", value=summary)
        if dry_run:
            return []
        return [vars(item) for item in plan if item.action in ("build", "rebuild", "swap")]


class IndexBuildOperator(CslBaseOperator):
    """Builds one planned index online (CONCURRENTLY, timeouts, lock retries, cleanup) and
    records it in ``csl_ops.index_builds``. Meant for ``.partial(...).expand(item=...)``."""

    template_fields: Sequence[str] = ("item", "lock_timeout_ms", "statement_timeout_s", "max_lock_retries")
    template_fields_renderers: ClassVar[dict[str, str]] = {"item": "json"}
    ui_color = "#fdf1d6"

    def __init__(self, *, item: Any, lock_timeout_ms: Any = 2000, statement_timeout_s: Any = 3600,
                 max_lock_retries: Any = 3, lock_backoff_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_s = statement_timeout_s
        self.max_lock_retries = max_lock_retries
        self.lock_backoff_s = lock_backoff_s

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import indexes

        item = indexes.PlanItem(**self.item)
        context["index_name"] = item.name  # for map_index_template
        declared = {d.name: d for d in indexes.load_catalog()}[item.name]
        with self.database() as db:
            try:
                result = indexes.build_index(
                    lambda: db.connect_direct("primary"), item, declared,
                    lock_timeout_ms=_int_param(self.lock_timeout_ms, "lock_timeout_ms"),
                    statement_timeout_s=_int_param(self.statement_timeout_s, "statement_timeout_s"),
                    max_lock_retries=_int_param(self.max_lock_retries, "max_lock_retries"),
                    backoff_s=self.lock_backoff_s)
                error = None
            except indexes.IndexBuildError as exc:
                result, error = exc.result, exc
            with db.connect_direct("primary") as conn:
                indexes.record_build(conn, context["ti"].run_id, result, item.statement)
        outcome = result.as_dict()
        context["ti"].xcom_push(key="build", value=outcome)
        if error is not None:
            raise AirflowFailException(str(error))
        log.info("%s %s in %d ms (%s bytes, %d attempt(s))", item.action, item.name, result.duration_ms,
                 result.size_bytes, result.attempts)
        return outcome


class IndexReportOperator(CslBaseOperator):
    """Summarises the run's builds (XCom + ``csl_ops.task_runs``); fails if any build failed."""

    def __init__(self, *, plan_task_id: str, build_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.build_task_id = build_task_id

    def execute(self, context: Any) -> dict[str, Any]:

        ti = context["ti"]
        summary = self.plan_of(context, self.plan_task_id, "summary")
        builds = [b for b in (ti.xcom_pull(task_ids=[self.build_task_id], key="build") or []) if b]
        failed = [b for b in builds if b["status"] != "success"]
        missing = sorted(set(summary["to_build"]) - {b["name"] for b in builds}) if builds or summary["to_build"] else []
        report = {
            "plan": summary["counts"],
            "built": [{k: b[k] for k in ("name", "action", "duration_ms", "size_bytes", "attempts")} for b in builds
                      if b["status"] == "success"],
            "failed": [{k: b[k] for k in ("name", "action", "error", "blockers", "cleaned_up")} for b in failed],
            "not_run": [] if _truthy(context["params"].get("dry_run")) else missing,
            "unknown": summary["unknown"],
            "blocked": summary.get("blocked", []),  # e.g. a unique index while duplicates exist: never attempted
            "total_build_ms": sum(b["duration_ms"] for b in builds),
        }
        with self.database() as db:
            self.record(db, context, status="failed" if failed or report["not_run"] else "success",
                        outcome=report,
                        error=", ".join(b["name"] for b in failed) or None)
        ti.xcom_push(key="report", value=report)
        if failed or report["not_run"]:
            raise AirflowFailException(
                "index builds failed: " + "; ".join(f"{b['name']}: {b['error']}" for b in failed)
                + (f"; never ran: {', '.join(report['not_run'])}" if report["not_run"] else ""))
        for item in report["blocked"]:
            log.warning("%s not built: %s", item["name"], item["reason"])
        log.info("indexes: %d built, %d unknown left alone, %d blocked, plan %s", len(report["built"]),
                 len(report["unknown"]), len(report["blocked"]), report["plan"])
        return report


class MaintenancePlanOperator(CslBaseOperator):
    """Gathers table evidence and chooses tonight's VACUUM/ANALYZE candidates, each with the
    reason it was chosen. Returns them for one mapped action task each (none on ``dry_run``)."""

    template_fields: Sequence[str] = ("tables", "mode", "max_tables", "dead_ratio", "dry_run")

    def __init__(self, *, tables: Any = (), mode: Any = "auto", max_tables: Any = 50, dead_ratio: Any = 0.1,
                 dry_run: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tables, self.mode, self.max_tables = tables, mode, max_tables
        self.dead_ratio, self.dry_run = dead_ratio, dry_run

    def execute(self, context: Any) -> list[dict[str, Any]]:
        import dataclasses
        import time

        from csl.maintenance import vacuum

        try:
            policy = vacuum.Policy(mode=str(self.mode), dead_ratio=float(self.dead_ratio),
                                   max_tables=_int_param(self.max_tables, "max_tables"),
                                   tables=tuple(_as_list(self.tables) if self.tables else ()))
        except (vacuum.MaintenanceError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        with self.database() as db:
            with db.connect_direct("primary") as conn:
                try:
                    chosen, skipped = vacuum.choose(vacuum.gather(conn), vacuum.settings(conn), policy)
                except vacuum.MaintenanceError as exc:
                    raise AirflowFailException(str(exc)) from exc
            dry_run = _truthy(self.dry_run)
            log.info("maintenance plan%s:\n%s", " (dry run: nothing will run)" if dry_run else "",
                     vacuum.format_plan(chosen, skipped))
            plan = [dataclasses.asdict(c) for c in chosen]
            self.record(db, context, status="success",
                        outcome={"chosen": len(plan), "skipped": skipped, "dry_run": dry_run,
                                 "tables": [f"{c['schema']}.{c['table']} ({c['reason']})" for c in plan]})
        ti = context["ti"]
        ti.xcom_push(key="plan", value={"chosen": plan, "skipped": skipped, "started_at": time.time(),
                                        "dry_run": dry_run})
        return [] if dry_run else plan


class MaintenanceActOperator(CslBaseOperator):
    """Runs one chosen action (``SKIP_LOCKED``, timeouts) unless the run's time budget is spent;
    records before/after figures in ``csl_ops.maintenance_actions``."""

    template_fields: Sequence[str] = ("candidate", "max_duration_s", "statement_timeout_s", "lock_timeout_ms")
    template_fields_renderers: ClassVar[dict[str, str]] = {"candidate": "json"}
    ui_color = "#e8eefc"

    def __init__(self, *, candidate: Any, plan_task_id: str = "plan", max_duration_s: Any = 3600,
                 statement_timeout_s: Any = 3600, lock_timeout_ms: Any = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate
        self.plan_task_id = plan_task_id
        self.max_duration_s = max_duration_s
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_ms = lock_timeout_ms

    def execute(self, context: Any) -> dict[str, Any]:
        import time

        from csl.maintenance import vacuum

        candidate = vacuum.candidate_from_dict(self.candidate)
        context["table_name"] = candidate.qualified  # for map_index_template
        plan = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="plan") or {}
        budget = float(self.max_duration_s)
        with self.database() as db:
            connect = lambda: db.connect_direct("primary")
            if time.time() - plan.get("started_at", time.time()) > budget:
                result = vacuum.ActionResult(candidate.schema, candidate.table, candidate.reason, candidate.action,
                                             "skipped_budget", error=f"max_duration_s={budget:g} spent before it started")
            else:
                result = vacuum.act(connect, candidate,
                                    statement_timeout_s=_int_param(self.statement_timeout_s, "statement_timeout_s"),
                                    lock_timeout_ms=_int_param(self.lock_timeout_ms, "lock_timeout_ms"))
            with connect() as conn:
                vacuum.record_action(conn, context["ti"].run_id, candidate, result)
        outcome = result.as_dict()
        context["ti"].xcom_push(key="action", value=outcome)
        if result.status == "failed":
            raise AirflowFailException(f"{candidate.action} {candidate.qualified} failed: {result.error}")
        log.info("%s %s: %s (%s)", candidate.action, candidate.qualified, result.status, result.error or "ok")
        return outcome


class MaintenanceReportOperator(CslBaseOperator):
    """Before/after summary of the night (XCom ``report`` + ``csl_ops.task_runs``)."""

    def __init__(self, *, plan_task_id: str = "plan", act_task_id: str = "act", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.act_task_id = act_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.maintenance import vacuum

        ti = context["ti"]
        plan = self.plan_of(context, self.plan_task_id, "plan")
        actions = [a for a in (ti.xcom_pull(task_ids=[self.act_task_id], key="action") or []) if a]
        report = {"chosen": len(plan["chosen"]), "skipped_by_policy": plan["skipped"], "dry_run": plan["dry_run"],
                  **vacuum.summarise(actions)}
        missing = len(plan["chosen"]) - len(actions) if not plan["dry_run"] else 0
        failed = report["by_status"].get("failed", 0) + max(missing, 0)
        with self.database() as db:
            self.record(db, context, status="failed" if failed else "success",
                        outcome=report,
                        error=f"{failed} action(s) failed or never ran" if failed else None)
        ti.xcom_push(key="report", value=report)
        if failed:
            raise AirflowFailException(f"{failed} maintenance action(s) failed or never ran: {report['tables']}")
        log.info("maintenance: %s; %d dead tuples removed", report["by_status"], report["dead_tuples_removed"])
        return report
