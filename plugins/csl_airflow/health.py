"""Operators of ``csl_platform_health``: one check per component, and the summary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.sdk.exceptions import AirflowFailException

from csl_airflow.base import CslBaseOperator, _as_list

__all__ = ["HealthSummaryOperator", "PlatformHealthOperator"]

log = logging.getLogger("csl.airflow.health")


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
        from csl.errors import CslError
        from csl.health import down_components

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
            with self.database() as db:
                self.record(db, context, status="success" if not failing else "failed",
                            outcome=report,
                            error=("down: " + ", ".join(failing)) if failing else None)
        except CslError as exc:  # the primary itself may be what is down
            log.error("could not record the run in csl_ops.task_runs: %s", exc)
        context["ti"].xcom_push(key="summary", value=report)
        if failing:
            raise AirflowFailException("platform unhealthy, down: " + ", ".join(failing))
        log.info("platform healthy%s", f" (tolerated: {', '.join(down)})" if down else "")
        return report
