"""Operators of ``csl_platform_health`` (``csl.health``): one check per component, and the summary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from csl_airflow.base import CslBaseOperator

__all__ = ["HealthSummaryOperator", "PlatformHealthOperator"]

log = logging.getLogger("csl.airflow.health")


class PlatformHealthOperator(CslBaseOperator):
    """Checks one component: ``database`` (primary, replica, lag, a routed read),
    ``storage`` (put/get/delete probe on ``provider``) or ``edge``.

    The component's report is the task's result (``csl.health.ComponentReport.as_dict()``),
    pushed before the task decides, so the summary has it also when this task fails. The
    database check fails only when the primary or reads are down; a replica that is down or
    lagging is reported, and reads keep working on the primary.
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

        context["component_name"] = self.component if self.component != "storage" else f"storage.{self.provider}"
        checked = health.check_component(self.settings, self.component, self.provider)
        context["ti"].xcom_push(key="return_value", value=checked.as_dict())  # the summary's input, also when down
        if checked.replica_note:
            log.warning("%s", checked.replica_note)
        log.info("%s: %s", checked.component, "ok" if not checked.failing else f"DOWN ({', '.join(checked.failing)})")
        checked.raise_if_down()
        return checked.as_dict()


class HealthSummaryOperator(CslBaseOperator):
    """Joins the checks' reports (``reports``: their results, as XComArgs) into one
    ``csl.health.HealthReport``, records it in ``csl_ops.task_runs`` and fails, naming every
    component that is down, unless the component is in ``tolerate``; a component in
    ``expected`` without a report counts as down."""

    template_fields: Sequence[str] = ("reports", "tolerate", "expected")

    def __init__(self, *, reports: Any, expected: Sequence[str], tolerate: Any = (), **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.reports = reports
        self.expected = expected
        self.tolerate = tolerate

    def execute(self, context: Any) -> dict[str, Any]:
        from csl import health
        from csl.errors import CslError

        # a mapped check's result is the sequence of its instances' results
        reports = [r for item in self.reports for r in (item if isinstance(item, Sequence) else [item])]
        summary = health.summarise(reports, expected=self.expected, tolerate=self.tolerate)
        try:
            with self.database() as db:
                self.record(db, context, status="success" if summary.ok else "failed", outcome=summary.as_dict(),
                            error=("down: " + ", ".join(summary.failing)) if summary.failing else None)
        except CslError as exc:  # the primary itself may be what is down
            log.error("could not record the run in csl_ops.task_runs: %s", exc)
        context["ti"].xcom_push(key="summary", value=summary.as_dict())
        summary.raise_if_unhealthy()
        log.info("platform healthy%s", f" (tolerated: {', '.join(summary.down)})" if summary.down else "")
        return summary.as_dict()
