"""Operators for the storage integrity sweep, the storage cleanup, the publication and the
replication (``csl.storage.integrity``, ``.cleanup``, ``.publication``, ``.replication``): the sweep
and the replication are plan → one mapped task per shard → a report that closes the run;
cleanup and publication are one task each.

Each ``execute`` builds its providers with ``csl.storage.providers_for`` and makes one csl call; what
was done is logged by csl (``csl.storage.*``), and csl's errors reach Airflow through the base's one
mapping (a provider down is retried, one that refuses fails the task)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from csl_airflow.base import CslBaseOperator

__all__ = [
    "ReplicationCopyOperator",
    "ReplicationPlanOperator",
    "ReplicationReportOperator",
    "StorageCleanupOperator",
    "StoragePublicationOperator",
    "StorageSweepPlanOperator",
    "StorageSweepReportOperator",
    "StorageSweepShardOperator",
]

log = logging.getLogger("csl.airflow.storage")

_SWEEP_FIELDS = ("depth", "key_order", "deep_sample", "prefix")


class _StorageOperator(CslBaseOperator):
    template_fields: Sequence[str] = ("providers",)

    def __init__(self, *, providers: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.providers = providers  # by role; None or empty: every configured one

    def storage_providers(self) -> list[Any]:
        from csl.storage import providers_for

        return providers_for(self.settings, self.providers)


class _SweepOperator(_StorageOperator):
    """A step of the sweep: its options (``csl.storage.integrity.SweepOptions``) from the run's Params."""

    template_fields: Sequence[str] = ("providers", *_SWEEP_FIELDS)

    def __init__(self, *, depth: Any = 2, key_order: Any = "path", deep_sample: Any = 0.0, prefix: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth, self.key_order, self.deep_sample, self.prefix = depth, key_order, deep_sample, prefix

    def sweep_options(self) -> Any:
        from csl.storage.integrity import SweepOptions

        return SweepOptions.for_settings(self.settings, depth=self.depth, key_order=self.key_order,
                                         deep_sample=self.deep_sample, prefix=self.prefix)


class StorageSweepPlanOperator(_SweepOperator):
    """Finds every key-prefix cell (database + each provider's delimiter listing), deals the
    cells out to ``shards`` and opens the sweep's record. Returns one item per shard."""

    template_fields: Sequence[str] = (*_SweepOperator.template_fields, "shards")

    def __init__(self, *, shards: Any = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.storage import integrity

        options, providers = self.sweep_options(), self.storage_providers()
        with self.database() as db, db.connect_direct() as conn:
            plan = integrity.plan_sweep(conn, providers, run_key=context["ti"].run_id, shards=self.shards,
                                        options=options)
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        return plan.shards()


class StorageSweepShardOperator(_SweepOperator):
    """Merges the database inventory with every provider's listing for the shard's cells and
    writes their findings in one transaction. A provider that cannot be listed fails the
    shard (retried), naming the provider; nothing is written for it."""

    template_fields: Sequence[str] = (*_SweepOperator.template_fields, "shard")
    template_fields_renderers: ClassVar[dict[str, str]] = {"shard": "json"}
    ui_color = "#fdf1e6"

    def __init__(self, *, shard: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.storage import integrity

        context["shard_name"] = integrity.shard_label(self.shard)
        options, providers = self.sweep_options(), self.storage_providers()
        with self.database() as db:
            summary = integrity.sweep_and_record(db, providers, self.shard, options=options).as_dict()
        context["ti"].xcom_push(key="shard", value=summary)
        return summary


class StorageSweepReportOperator(_SweepOperator):
    """Closes the sweep: totals per finding kind and provider, bytes, duration; fails naming
    the shards (and providers) that did not finish. Its outlets (the findings Asset) are
    emitted only when every shard swept."""

    template_fields: Sequence[str] = (*_SWEEP_FIELDS, "plan")
    template_fields_renderers: ClassVar[dict[str, str]] = {"plan": "json"}

    def __init__(self, *, plan: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan = plan  # the plan task's XCom "plan" (csl.storage.integrity.SweepPlan.as_dict())

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.storage import integrity

        options = self.sweep_options()
        with self.database() as db:
            with db.connect_direct() as conn:
                summary = integrity.finish_planned(conn, self.plan, options=options)
            self.record(db, context, status="failed" if summary.error else "success", outcome=summary.as_dict(),
                        error=summary.error)
        context["ti"].xcom_push(key="summary", value=summary.as_dict())
        summary.check()  # the shards (and providers) that did not sweep: the task fails
        return summary.as_dict()


class StorageCleanupOperator(_StorageOperator):
    """Expired temporary uploads and old orphans → quarantine (never deleted here), capped.

    ``dry_run`` None (the Param's default) is automatic: a dry run unless the schedule started
    the run. XCom ``cleanup`` and the return value hold counts and a bounded sample
    (``csl.storage.cleanup.CleanupResult.summary``); every candidate is in the log."""

    template_fields: Sequence[str] = ("providers", "temp_prefix", "temp_ttl_h", "orphan_grace_h", "max_objects",
                                      "max_share", "dry_run", "purge_quarantine", "quarantine_retention_days")

    def __init__(self, *, temp_prefix: Any = "tmp/", temp_ttl_h: Any = 24, orphan_grace_h: Any = 72,
                 max_objects: Any = 1000, max_share: Any = 0.10, dry_run: Any = None, purge_quarantine: Any = False,
                 quarantine_retention_days: Any = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temp_prefix, self.temp_ttl_h, self.orphan_grace_h = temp_prefix, temp_ttl_h, orphan_grace_h
        self.max_objects, self.max_share, self.dry_run = max_objects, max_share, dry_run
        self.purge_quarantine, self.quarantine_retention_days = purge_quarantine, quarantine_retention_days

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.cdn.queue import published_base_url
        from csl.storage import cleanup, configured_buckets

        run_type = getattr(context["dag_run"], "run_type", None)
        scheduled = getattr(run_type, "value", run_type) == "scheduled"
        dry_run = cleanup.resolve_dry_run(self.dry_run, scheduled=scheduled)
        log.info("%s run (dry_run Param %r, run type %s)", "dry" if dry_run else "real", self.dry_run, run_type)
        providers = self.storage_providers()
        with self.database() as db:
            try:
                with db.connect_direct() as conn:
                    result = cleanup.run_cleanup(
                        conn, providers, run_key=context["ti"].run_id, temp_prefix=self.temp_prefix,
                        temp_ttl_h=self.temp_ttl_h, orphan_grace_h=self.orphan_grace_h, max_objects=self.max_objects,
                        max_share=self.max_share, dry_run=dry_run, purge_quarantine=self.purge_quarantine,
                        quarantine_retention_days=self.quarantine_retention_days,
                        buckets=configured_buckets(self.settings), edge_base_url=published_base_url(self.settings))
            except cleanup.CleanupError as exc:  # a cap, a bad prefix or share: nothing was touched
                self.record(db, context, status="failed", error=str(exc))
                raise
            outcome = result.summary()
            self.record(db, context, status="success", outcome=outcome)
        context["ti"].xcom_push(key="cleanup", value=outcome)
        return outcome


class StoragePublicationOperator(_StorageOperator):
    """Makes every public provider's published bucket hold exactly the approved samples
    (``csl.storage.publication``): copies verified by SHA-256, withdrawals capped, the edge purged.
    XCom ``publication`` and the return value hold counts and a bounded sample of keys."""

    template_fields: Sequence[str] = ("providers", "dry_run", "max_withdrawals", "max_share")

    def __init__(self, *, dry_run: Any = False, max_withdrawals: Any = 1000, max_share: Any = 0.10,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run, self.max_withdrawals, self.max_share = dry_run, max_withdrawals, max_share

    def execute(self, context: Any) -> dict[str, Any]:
        from contextlib import ExitStack

        from csl.cdn import CachePolicy, VarnishEdge
        from csl.storage import configured_buckets, providers_for, publication

        providers = providers_for(self.settings, self.providers, published_only=True)
        with self.database() as db, ExitStack() as stack:
            edge = stack.enter_context(VarnishEdge(self.settings.edge)) if self.settings.edge.enabled else None
            conn = stack.enter_context(db.connect_direct())
            try:
                run = publication.publish_all(conn, providers, run_key=context["ti"].run_id, dry_run=self.dry_run,
                                              max_withdrawals=self.max_withdrawals, max_share=self.max_share,
                                              edge=edge, buckets=configured_buckets(self.settings),
                                              cache_policy=CachePolicy.from_settings(self.settings.edge))
            except publication.PublicationError as exc:  # a cap or a bad Param: recorded, nothing changed
                self.record(db, context, status="failed", error=str(exc))
                raise
            self.record(db, context, status="failed" if run.error else "success", outcome=run.as_dict(),
                        error=run.error)
        context["ti"].xcom_push(key="publication", value=run.as_dict())
        run.check()  # copies that did not match their original: retried (a copy can fail in transit)
        return run.as_dict()


_REPLICATION_FIELDS = ("mode", "prefix", "source", "destination", "max_objects", "max_bytes", "concurrency",
                       "multipart_threshold_mb", "dry_run")


class _ReplicationOperator(_StorageOperator):
    """A step of a replication run: its options (``csl.storage.replication.ReplicationOptions``)
    from the run's Params; ``mode`` None is decided by how the run started."""

    template_fields: Sequence[str] = ("providers", *_REPLICATION_FIELDS)

    def __init__(self, *, mode: Any = "auto", prefix: Any = None, source: Any = None, destination: Any = None,
                 max_objects: Any = None, max_bytes: Any = None, concurrency: Any = None,
                 multipart_threshold_mb: Any = None, dry_run: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode, self.prefix, self.source, self.destination = mode, prefix, source, destination
        self.max_objects, self.max_bytes, self.concurrency = max_objects, max_bytes, concurrency
        self.multipart_threshold_mb, self.dry_run = multipart_threshold_mb, dry_run

    def replication_options(self, context: Any) -> Any:
        from csl.storage.replication import ReplicationOptions, resolve_mode

        run_type = getattr(context["dag_run"], "run_type", None)
        values = {name: getattr(self, name) for name in _REPLICATION_FIELDS}
        values["mode"] = resolve_mode(self.mode, run_type=getattr(run_type, "value", run_type))
        return ReplicationOptions.from_params(values)


class ReplicationPlanOperator(_ReplicationOperator):
    """Opens the run, gathers its input (queue, findings, or a fresh diff of the prefix), decides
    every key and records the plan; refuses over the caps. XCom ``plan`` shows it (a dry run
    stops here); returns one item per copy shard (none for a dry run)."""

    template_fields: Sequence[str] = (*_ReplicationOperator.template_fields, "shards")

    def __init__(self, *, shards: Any = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.storage import configured_buckets
        from csl.storage.replication import plan_replication

        options, providers = self.replication_options(context), self.storage_providers()
        with self.database() as db:
            plan = plan_replication(db, providers, run_key=context["ti"].run_id, options=options,
                                    buckets=configured_buckets(self.settings))
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        return [] if plan.dry_run else plan.shards(self.shards)


class ReplicationCopyOperator(_ReplicationOperator):
    """Copies and verifies one shard's planned objects, ``concurrency`` at a time. A provider that
    cannot answer fails the task naming it (retried; what finished stays verified)."""

    template_fields: Sequence[str] = (*_ReplicationOperator.template_fields, "shard")
    template_fields_renderers: ClassVar[dict[str, str]] = {"shard": "json"}
    ui_color = "#e6f1fd"

    def __init__(self, *, shard: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.storage import integrity
        from csl.storage.replication import copy_shard

        context["shard_name"] = integrity.shard_label(self.shard)
        options, providers = self.replication_options(context), self.storage_providers()
        from csl.cdn.queue import published_base_url

        edge = published_base_url(self.settings)
        with self.database() as db:
            result = copy_shard(db, providers, self.shard, options=options, edge_base_url=edge).as_dict()
        context["ti"].xcom_push(key="copies", value=result)
        return result


class ReplicationReportOperator(CslBaseOperator):
    """Closes the run: settles what the copies proved, sums it up (XCom ``summary``, the run
    record) and fails naming the copies that failed or never finished. Its outlets (Asset
    ``csl_storage_replicated``) are emitted only when the run is done."""

    template_fields: Sequence[str] = ("plan",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"plan": "json"}

    def __init__(self, *, plan: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan = plan  # the plan task's XCom "plan" (ReplicationPlan.as_dict())

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.storage.replication import finish_replication

        with self.database() as db:
            with db.connect_direct() as conn:
                summary = finish_replication(conn, self.plan["run_id"])
            failed = summary.failed or summary.not_done
            self.record(db, context, status="failed" if failed else "success", outcome=summary.as_dict(),
                        error=summary.failures[0]["error"] if failed and summary.failures else None)
        context["ti"].xcom_push(key="summary", value=summary.as_dict())
        log.info("%s", summary.format())
        summary.check()
        return summary.as_dict()
