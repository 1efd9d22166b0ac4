"""Thin operators over ``csl``: build settings from connections, call one function, push a
small JSON result. Errors that a retry cannot fix raise ``AirflowFailException``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from csl.config import Settings
from csl.errors import ConfigError
from csl_airflow.connections import settings_from_connections
from csl_airflow.params import conf_refusal

__all__ = ["CslBaseOperator", "PlatformHealthOperator", "run_key"]

log = logging.getLogger("csl.airflow")


def run_key(context: Any):
    """The ``csl_ops.task_runs`` key of the running task instance."""
    from csl.runs import RunKey

    ti = context["ti"]
    return RunKey(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                  map_index=ti.map_index if ti.map_index is not None else -1, try_number=ti.try_number or 1)


class CslBaseOperator(BaseOperator):
    """Turns Airflow connections into ``csl`` settings (once per task run), and refuses, before
    the task does anything, a run whose ``conf`` has a key the DAG does not declare as a Param.

    The API server refuses such a trigger with HTTP 400 (``csl_airflow.trigger_guard``); this
    check also covers what does not pass it (``airflow dags trigger``, TriggerDagRunOperator)."""

    def __init__(self, *, conn_ids: dict[str, str] | None = None, max_replica_lag_s: float | str = 30.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_ids = conn_ids or {}
        self.max_replica_lag_s = max_replica_lag_s

    def pre_execute(self, context: Any) -> None:
        declared = set(self.params or {}) | (set(self.dag.params) if self.has_dag() else set())
        refusal = conf_refusal(self.dag_id, getattr(context.get("dag_run"), "conf", None), declared)
        if refusal:
            raise AirflowFailException(refusal)  # no retry: the same conf would be refused again
        super().pre_execute(context)

    @cached_property
    def settings(self) -> Settings:
        try:
            return settings_from_connections(self.conn_ids, max_replica_lag_s=self.max_replica_lag_s)
        except ConfigError as exc:  # a missing or malformed connection: retrying cannot help
            raise AirflowFailException(f"configuration: {exc}") from exc


class PlatformHealthOperator(CslBaseOperator):
    """Checks one component: ``database`` (primary, replica, lag, a routed read),
    ``storage`` (put/get/delete probe on ``provider``) or ``edge``.

    Pushes the component's report under the XCom key ``report`` before deciding, so the
    summary sees it even when this task fails. The database check fails only when the
    primary or reads are down; a replica that is down or lagging is reported, and reads
    keep working on the primary.
    """

    template_fields: Sequence[str] = ("component", "provider", "max_replica_lag_s")
    template_fields_renderers: ClassVar[dict[str, str]] = {"conn_ids": "json"}
    ui_color = "#e6f2ea"

    def __init__(self, *, component: str, provider: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if component not in ("database", "storage", "edge"):
            raise ValueError(f"component must be database, storage or edge, got {component!r}")
        if component == "storage" and not provider:
            raise ValueError("component 'storage' needs a provider name")
        self.component = component
        self.provider = provider

    def execute(self, context: Any) -> dict[str, Any]:
        from csl import health

        name = self.component if self.component != "storage" else f"storage.{self.provider}"
        context["component_name"] = name  # for map_index_template
        if self.component == "database":
            report = health.check_database(self.settings)
            failed = [f"database.{part}" for part in ("primary", "reads") if not report[part].get("ok")]
            if not report["replica"].get("ok") and report["replica"].get("configured", True):
                log.warning("replica down or lagging (%s); reads routed to %s",
                            report["replica"].get("error"), report["reads"]["target"])
        elif self.component == "storage":
            report = health.check_storage(self.settings, self.provider)
            failed = [] if report["ok"] else [name]
        else:
            report = health.check_edge(self.settings)
            failed = [] if report["ok"] else ["edge"]
        context["ti"].xcom_push(key="report", value={"component": name, "report": report})
        log.info("%s: %s", name, "ok" if not failed else f"DOWN ({', '.join(failed)})")
        if failed:
            details = "; ".join(_error_of(report, part) for part in failed)
            raise AirflowFailException(f"{', '.join(failed)} down: {details}")
        return report


def _error_of(report: dict[str, Any], part: str) -> str:
    key = part.split(".", 1)[1] if part.startswith("database.") else None
    info = report.get(key, {}) if key else report
    return f"{part}: {info.get('error', 'unhealthy')}"


class HealthSummaryOperator(CslBaseOperator):
    """Collects the check tasks' reports, records them in ``csl_ops.task_runs`` and fails,
    naming every component that is down, unless the component is in ``tolerate``."""

    template_fields: Sequence[str] = ("tolerate", "expected")

    def __init__(self, *, check_task_ids: Sequence[str], expected: Sequence[str] | str,
                 tolerate: Sequence[str] | str = (), **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.check_task_ids = list(check_task_ids)
        self.expected = expected
        self.tolerate = tolerate

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.db import Database
        from csl.errors import CslError
        from csl.health import down_components
        from csl.runs import record_run

        pulled = context["ti"].xcom_pull(task_ids=self.check_task_ids, key="report") or []
        report: dict[str, Any] = {"storage": {}}
        seen = set()
        for item in pulled:
            if not item:
                continue
            seen.add(item["component"])
            if item["component"].startswith("storage."):
                report["storage"][item["component"].split(".", 1)[1]] = item["report"]
            else:
                report[item["component"]] = item["report"]
        expected = _as_list(self.expected)
        tolerate = set(_as_list(self.tolerate))
        unreported = [c for c in expected if c not in seen]
        down = down_components(report) + [f"{c} (no report)" for c in unreported]
        failing = [c for c in down if c.split(" ")[0] not in tolerate]
        report.update(down=down, failing=failing, ok=not failing, tolerated=sorted(tolerate))
        try:
            with Database(self.settings.require_database()) as db:
                record_run(db, run_key(context), status="success" if not failing else "failed",
                           params=dict(context["params"]), outcome=report,
                           error=("down: " + ", ".join(failing)) if failing else None)
        except CslError as exc:  # the primary itself may be what is down
            log.error("could not record the run in csl_ops.task_runs: %s", exc)
        context["ti"].xcom_push(key="summary", value=report)
        if failing:
            raise AirflowFailException("platform unhealthy, down: " + ", ".join(failing))
        log.info("platform healthy%s", f" (tolerated: {', '.join(down)})" if down else "")
        return report


def _as_list(value: Sequence[str] | str | None) -> list[str]:
    """A list Param as rendered by a template: a list, JSON text or ``a,b``; null (an emptied form
    field) is the empty list."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "null", "None")):
        return []
    if isinstance(value, str):
        import json

        value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
    return [str(v).strip() for v in value]


def _int_param(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"{name}: expected a whole number, got {value!r}") from None


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
        from csl.db import Database
        from csl.maintenance import indexes
        from csl.runs import record_run

        only = _as_list(self.only) if self.only else []
        full = indexes.load_catalog()
        try:
            chosen = indexes.select(full, only)
        except indexes.CatalogError as exc:
            raise AirflowFailException(str(exc)) from exc
        with Database(self.settings.require_database()) as db:
            with db.connect_direct("primary") as conn:
                plan = indexes.make_plan(indexes.diff(conn, chosen, full_catalog=full), chosen)
            summary = indexes.plan_summary(plan)
            dry_run = _truthy(self.dry_run)
            log.info("index plan%s:\n%s", " (dry run: nothing will be built)" if dry_run else "",
                     indexes.format_plan(plan))
            record_run(db, run_key(context), status="success", params=dict(context["params"]),
                       outcome={"summary": summary, "dry_run": dry_run})
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
        from csl.db import Database
        from csl.maintenance import indexes

        item = indexes.PlanItem(**self.item)
        context["index_name"] = item.name  # for map_index_template
        declared = {d.name: d for d in indexes.load_catalog()}[item.name]
        with Database(self.settings.require_database()) as db:
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
        from csl.db import Database
        from csl.runs import record_run

        ti = context["ti"]
        summary = ti.xcom_pull(task_ids=self.plan_task_id, key="summary")
        if summary is None:
            raise AirflowFailException("no plan: the plan task failed (see its log)")
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
        with Database(self.settings.require_database()) as db:
            record_run(db, run_key(context), status="failed" if failed or report["not_run"] else "success",
                       params=dict(context["params"]), outcome=report,
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


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


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

        from csl.db import Database
        from csl.maintenance import vacuum
        from csl.runs import record_run

        try:
            policy = vacuum.Policy(mode=str(self.mode), dead_ratio=float(self.dead_ratio),
                                   max_tables=_int_param(self.max_tables, "max_tables"),
                                   tables=tuple(_as_list(self.tables) if self.tables else ()))
        except (vacuum.MaintenanceError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        with Database(self.settings.require_database()) as db:
            with db.connect_direct("primary") as conn:
                try:
                    chosen, skipped = vacuum.choose(vacuum.gather(conn), vacuum.settings(conn), policy)
                except vacuum.MaintenanceError as exc:
                    raise AirflowFailException(str(exc)) from exc
            dry_run = _truthy(self.dry_run)
            log.info("maintenance plan%s:\n%s", " (dry run: nothing will run)" if dry_run else "",
                     vacuum.format_plan(chosen, skipped))
            plan = [dataclasses.asdict(c) for c in chosen]
            record_run(db, run_key(context), status="success", params=dict(context["params"]),
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

        from csl.db import Database
        from csl.maintenance import vacuum

        candidate = vacuum.candidate_from_dict(self.candidate)
        context["table_name"] = candidate.qualified  # for map_index_template
        plan = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="plan") or {}
        budget = float(self.max_duration_s)
        with Database(self.settings.require_database()) as db:
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
        from csl.db import Database
        from csl.maintenance import vacuum
        from csl.runs import record_run

        ti = context["ti"]
        plan = ti.xcom_pull(task_ids=self.plan_task_id, key="plan")
        if plan is None:
            raise AirflowFailException("no plan: the plan task failed (see its log)")
        actions = [a for a in (ti.xcom_pull(task_ids=[self.act_task_id], key="action") or []) if a]
        report = {"chosen": len(plan["chosen"]), "skipped_by_policy": plan["skipped"], "dry_run": plan["dry_run"],
                  **vacuum.summarise(actions)}
        missing = len(plan["chosen"]) - len(actions) if not plan["dry_run"] else 0
        failed = report["by_status"].get("failed", 0) + max(missing, 0)
        with Database(self.settings.require_database()) as db:
            record_run(db, run_key(context), status="failed" if failed else "success",
                       params=dict(context["params"]), outcome=report,
                       error=f"{failed} action(s) failed or never ran" if failed else None)
        ti.xcom_push(key="report", value=report)
        if failed:
            raise AirflowFailException(f"{failed} maintenance action(s) failed or never ran: {report['tables']}")
        log.info("maintenance: %s; %d dead tuples removed", report["by_status"], report["dead_tuples_removed"])
        return report


class SettlementOperator(CslBaseOperator):
    """One settlement run (advisory lock, allocate, post, claw back, gate, payout instructions).

    A failed gate fails the task without retry (the data must be fixed); its findings and the
    validation result stay in ``csl_ops``. Emits the task's outlets (the ledger Asset) only on
    success."""

    template_fields: Sequence[str] = ("share_bps", "minimum_payout_cents", "period_start", "period_end", "dry_run")

    def __init__(self, *, share_bps: Any = 7000, minimum_payout_cents: Any = 1000, period_start: Any = None,
                 period_end: Any = None, dry_run: Any = False, lock_wait_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.share_bps, self.minimum_payout_cents = share_bps, minimum_payout_cents
        self.period_start, self.period_end, self.dry_run = period_start, period_end, dry_run
        self.lock_wait_s = lock_wait_s

    def execute(self, context: Any) -> dict[str, Any]:
        from collections import Counter

        from csl import settlement
        from csl.db import Database
        from csl.runs import record_run

        def optional(value: Any) -> str | None:
            return None if value in (None, "", "None") else str(value)

        try:
            params = settlement.Params(share_bps=_int_param(self.share_bps, "contributor_share_bps"),
                                       minimum_payout_cents=_int_param(self.minimum_payout_cents, "minimum_payout_cents"),
                                       period_start=optional(self.period_start), period_end=optional(self.period_end),
                                       dry_run=_truthy(self.dry_run), lock_wait_s=self.lock_wait_s)
        except settlement.SettlementParamsError as exc:
            raise AirflowFailException(str(exc)) from exc
        ti = context["ti"]
        with Database(self.settings.require_database()) as db, db.connect_direct("primary") as conn:
            try:  # SettlementBusy / SettlementRace (the platform wrote a split meanwhile) raise: Airflow retries
                outcome = settlement.settle(conn, params, run_key=f"{ti.dag_id}/{ti.run_id}")
            except settlement.GateFailed as exc:
                ti.xcom_push(key="gate", value=exc.outcome["gate"])
                ti.xcom_push(key="findings", value=exc.outcome["findings"][:200])
                record_run(db, run_key(context), status="failed", params=dict(context["params"]),
                           outcome={k: v for k, v in exc.outcome.items() if k not in ("findings",)}, error=str(exc))
                raise AirflowFailException(f"{exc}; {len(exc.outcome['findings'])} finding(s), see XCom 'findings'") from exc
            record_run(db, run_key(context), status="success", params=dict(context["params"]),
                       outcome={k: v for k, v in outcome.items() if k not in ("findings", "payouts")}
                       | {"payouts": len(outcome.get("payouts", []))})
        summary = {k: outcome.get(k) for k in ("status", "run_id", "due", "licences", "held", "splits_reused",
                                              "splits_paid_before", "by_currency", "clawbacks", "timings_s")}
        summary["payouts"] = len(outcome.get("payouts", []))
        summary["payout_minor"] = sum(p["amount_minor"] for p in outcome.get("payouts", []))
        summary["payout_holds"] = dict(Counter(h["reason"] for h in outcome.get("payout_holds", [])))
        ti.xcom_push(key="gate", value=outcome.get("gate"))
        log.info("settlement %s: %s", summary["status"], summary)
        return summary


class PayoutSendOperator(CslBaseOperator):
    """Sends payouts (only when ``enabled``) through the ``csl_payouts`` connection (host, port,
    schema = ``http``/``https``, password = the API key); see ``csl.settlement.PayoutSender``.

    Refused payouts and payouts needing review fail the task without retry; payouts whose
    outcome is still unknown raise so that Airflow retries (same idempotency keys)."""

    template_fields: Sequence[str] = ("enabled",)

    def __init__(self, *, enabled: Any = False, payouts_conn_id: str = "csl_payouts", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled
        self.payouts_conn_id = payouts_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowSkipException

        from csl import settlement
        from csl.db import Database

        if not _truthy(self.enabled):
            raise AirflowSkipException("send_payouts is false: instructions stay 'instructed'")
        conn_info = BaseHook.get_connection(self.payouts_conn_id)
        scheme = conn_info.schema or "https"
        port = f":{conn_info.port}" if conn_info.port else ""
        # A bad endpoint or key (refused by us, or a 401/403 from the provider) is configuration: no retry.
        # An unreachable provider (PayoutProviderUnavailable) raises as it is: Airflow retries.
        try:
            sender = settlement.PayoutSender(endpoint=f"{scheme}://{conn_info.host}{port}",
                                             api_key=conn_info.password or "")
        except ConfigError as exc:
            raise AirflowFailException(f"{self.payouts_conn_id}: {exc}") from exc
        try:
            with Database(self.settings.require_database()) as db, db.connect_direct("primary") as conn:
                result = sender.send(conn)
        except ConfigError as exc:  # settlement.PayoutConfigError: payouts untouched
            raise AirflowFailException(f"{self.payouts_conn_id}: {exc}") from exc
        finally:
            sender.close()
        context["ti"].xcom_push(key="errors", value=result["errors"][:200])
        if result["failed"] or result["needs_review"]:  # a person must act: retrying the task cannot help
            raise AirflowFailException(f"{result['failed']} payout(s) refused, {result['needs_review']} need review "
                                       f"(outcome unknown past the idempotency window): {result['errors'][:5]}")
        if result["retry_later"]:
            raise RuntimeError(f"{result['retry_later']} payout(s) with an unknown outcome, sent again with the same "
                               f"idempotency key on retry: {result['errors'][:3]}")  # transient: Airflow retries
        log.info("payouts: %s confirmed (%s looked up)", result["confirmed"], result["looked_up"])
        return {k: v for k, v in result.items() if k != "errors"}


class StatementOperator(CslBaseOperator):
    """Writes the per-contributor statement CSV for data teams (one file per run)."""

    def __init__(self, *, out_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        import os
        from pathlib import Path

        from csl import settlement
        from csl.db import Database

        root = Path(self.out_dir or os.environ.get("CSL_REPORTS_DIR")
                    or Path(os.environ.get("AIRFLOW_HOME", ".")) / "csl_reports")
        folder = root / "settlement"
        folder.mkdir(parents=True, exist_ok=True)
        safe_run = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in context["ti"].run_id)
        path = folder / f"statement_{safe_run}.csv"
        with (Database(self.settings.require_database()) as db, db.connect_direct("primary") as conn,
              path.open("w", newline="") as out):
            rows = settlement.write_statement(conn, out)
        log.info("statement: %d postings in %s", rows, path)
        return {"path": str(path), "rows": rows}
