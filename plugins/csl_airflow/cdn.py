"""Operators of the CDN purge (``csl.cdn.purge``): plan → send → wait for asynchronous providers
(deferred to ``csl_airflow.triggers.CdnCompletionTrigger``: no worker slot held while polling) →
report. Every step reads and writes the run's batches in ``csl_ops.cdn_purges``, so a retry of any
step, or of the whole run, sends nothing twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from csl_airflow.base import CslBaseOperator, map_errors

__all__ = ["CdnPurgeCompletionOperator", "CdnPurgePlanOperator", "CdnPurgeReportOperator", "CdnPurgeSendOperator"]

log = logging.getLogger("csl.airflow.cdn")


class _CdnOperator(CslBaseOperator):
    def cdn(self) -> Any:
        """The configured zones and their providers (``csl.cdn.Cdn``): a context manager."""
        from csl.cdn import Cdn

        return Cdn.from_settings(self.settings)

    @staticmethod
    def provider_for(cdn: Any):
        return lambda zone: cdn.provider(zone.name)


class CdnPurgePlanOperator(_CdnOperator):
    """The purge queue's owed rows and this run's ``urls`` / ``tags`` / ``prefixes`` (refused naming
    the value when it fits no zone), deduplicated and cut into batches at each provider's limit.
    XCom ``plan``; returns how many batches there are to send (0: the downstream tasks skip)."""

    template_fields: Sequence[str] = ("urls", "tags", "prefixes", "zone", "provider", "dry_run")
    template_fields_renderers: ClassVar[dict[str, str]] = {"urls": "json", "tags": "json", "prefixes": "json"}

    def __init__(self, *, urls: Any = None, tags: Any = None, prefixes: Any = None, zone: Any = None,
                 provider: Any = None, dry_run: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls, self.tags, self.prefixes = urls, tags, prefixes
        self.zone, self.provider, self.dry_run = zone, provider, dry_run

    def execute(self, context: Any) -> int:
        from csl.cdn.purge import manual_requests, plan_purges

        with self.cdn() as cdn:
            requests = manual_requests(cdn.zones, urls=self.urls or (), tags=self.tags or (),
                                       prefixes=self.prefixes or (), zone=self.zone, provider=self.provider,
                                       supports=lambda zone, kind: cdn.provider(zone.name).limits.supports(kind))
            with self.database() as db, db.connect_direct() as conn:
                plan = plan_purges(conn, cdn.zones, lambda zone: cdn.provider(zone.name).limits,
                                   run_key=context["ti"].run_id, requests=requests, dry_run=bool(self.dry_run))
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        log.info("purge plan: %d batch(es) %s%s", len(plan.batches), plan.totals() or "(nothing owed)",
                 " (dry run: nothing sent)" if plan.dry_run else "")
        return 0 if plan.dry_run else len(plan.batches)


class _AfterPlan(_CdnOperator):
    template_fields: Sequence[str] = ("batches",)

    def __init__(self, *, batches: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches = batches  # the plan task's result: batches to send (0 for a dry run or nothing owed)

    def skip_when_nothing_planned(self) -> None:
        """Skip when the plan has nothing to send; fail when there is no plan at all (the plan task
        failed: a step that runs whatever its upstream did must not turn that into a success)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        if self.batches is None:
            raise AirflowFailException("no result from task 'plan': it failed or did not run (see its log)")
        if not self.batches:
            raise AirflowSkipException("nothing to purge (an empty queue, or a dry run)")


class CdnPurgeSendOperator(_AfterPlan):
    """Sends the run's batches not yet confirmed, each provider under its rate limit; XCom ``sent``.
    A batch refused for good fails the task after the others went; one not sent (provider down or
    throttled past every retry) is retried with the task."""

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.cdn.purge import send_purges

        self.skip_when_nothing_planned()
        with self.cdn() as cdn, self.database() as db, db.connect_direct() as conn:
            result = send_purges(conn, cdn.zones, self.provider_for(cdn), run_key=context["ti"].run_id,
                                 connect=db.connect_direct)
        context["ti"].xcom_push(key="sent", value=result.as_dict())
        result.check()
        return result.as_dict()


class CdnPurgeCompletionOperator(_AfterPlan):
    """Waits for the batches that asynchronous providers (CloudFront, Azure Front Door) accepted:
    deferred to ``CdnCompletionTrigger``, which polls without holding a worker slot; then writes
    their end states back. Fails naming a batch whose provider reports it failed."""

    template_fields: Sequence[str] = (*_AfterPlan.template_fields, "poll_s", "timeout_s")

    def __init__(self, *, poll_s: float = 30.0, timeout_s: float = 3600.0, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")  # some batches may be pending though others failed
        super().__init__(**kwargs)
        self.poll_s, self.timeout_s = poll_s, timeout_s

    def execute(self, context: Any) -> dict[str, int]:
        from csl.cdn.purge import pending_batches

        self.skip_when_nothing_planned()
        with self.database() as db, db.connect_direct() as conn:
            pending = pending_batches(conn, context["ti"].run_id)
        if not pending:
            return {}
        from csl_airflow.triggers import CdnCompletionTrigger

        log.info("waiting for %d asynchronous purge batch(es): %s", len(pending),
                 ", ".join(f"{p['provider']}/{p['zone']} {p['request_id']}" for p in pending[:5]))
        self.defer(trigger=CdnCompletionTrigger(conn_ids=self.conn_ids, pending=pending, poll_s=float(self.poll_s),
                                                timeout_s=float(self.timeout_s)),
                   method_name="execute_complete")

    @map_errors
    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, int]:
        from csl.cdn.purge import PurgeFailed, PurgeStillPending, settle_completion

        states = event.get("states") or {}
        with self.database() as db, db.connect_direct() as conn:
            counts = settle_completion(conn, states, errors=event.get("errors"))
        log.info("asynchronous purges: %s", counts)
        if event.get("error"):
            raise PurgeStillPending(f"the completion trigger stopped: {event['error']}")
        if counts.get("failed"):
            failed = [b for b, s in states.items() if s == "failed"]
            raise PurgeFailed(f"{len(failed)} purge batch(es) failed at the provider: {', '.join(failed[:5])}")
        if counts.get("pending"):
            raise PurgeStillPending(f"{counts['pending']} purge batch(es) still in progress after {self.timeout_s} s")
        return counts


class CdnPurgeReportOperator(_AfterPlan):
    """The run per provider and zone (XCom ``summary``, ``csl_ops.task_runs``); fails naming the
    batches that failed or are still pending. Runs when sending failed too; skips with nothing sent."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.cdn.purge import summarise

        self.skip_when_nothing_planned()
        with self.database() as db:
            with db.connect_direct() as conn:
                summary = summarise(conn, context["ti"].run_id)
            bad = summary.failed or summary.pending
            self.record(db, context, status="failed" if bad else "success", outcome=summary.as_dict(),
                        error=summary.failures[0] if summary.failures else None)
        context["ti"].xcom_push(key="summary", value=summary.as_dict())
        log.info("%s", summary.format())
        summary.check()
        return summary.as_dict()
