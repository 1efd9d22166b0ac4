"""Operators for the storage integrity sweep, the storage cleanup and the publication
(``csl.storage.integrity``, ``csl.storage.cleanup``, ``csl.storage.publication``): plan → one mapped task per shard →
a report that closes the sweep; cleanup and publication are one task each."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from csl_airflow.base import CslBaseOperator, _as_list, _int_param, _truthy

__all__ = [
    "StorageCleanupOperator",
    "StoragePublicationOperator",
    "StorageSweepPlanOperator",
    "StorageSweepReportOperator",
    "StorageSweepShardOperator",
]

log = logging.getLogger("csl.airflow.storage")


def _options(params: dict[str, Any], settings: Any):
    """The sweep's options from the run's Params (``prefix`` null or empty = everything); URL-form
    references may name any configured bucket."""
    from csl.storage.integrity import SweepError, SweepOptions

    try:
        return SweepOptions(depth=int(params.get("depth", 2)), key_order=str(params.get("key_order", "path")),
                            deep_rate=float(params.get("deep_sample", 0.0)), prefix=str(params.get("prefix") or ""),
                            buckets=tuple(sorted({p.bucket for p in settings.storage})))
    except (SweepError, TypeError, ValueError) as exc:
        raise AirflowFailException(f"bad sweep parameters: {exc}") from exc


def _storage_failure(exc: Exception, message: str) -> AirflowException:
    """A provider that is unavailable is retried; one that refuses (4xx) fails the task at once."""
    from csl.errors import ProviderUnavailable

    return (AirflowException if isinstance(exc, ProviderUnavailable) else AirflowFailException)(message)


def _optional_bool(value: Any) -> bool | None:
    """A templated ``["null", "boolean"]`` Param: None when null (rendered "None") or empty."""
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return _truthy(value)


class _StorageOperator(CslBaseOperator):
    template_fields: Sequence[str] = ("providers",)

    def __init__(self, *, providers: Any = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.providers = providers

    def storage_providers(self) -> list[Any]:
        from csl.errors import ConfigError
        from csl.storage import StorageProvider

        given = self.providers if self.providers not in (None, "", "null", "None") else []
        names = list(dict.fromkeys(_as_list(given) if given else [])) or [p.name for p in self.settings.storage]
        if not names:
            raise AirflowFailException("no storage providers configured (connections csl_storage_*)")
        try:
            return [StorageProvider(self.settings.provider(name)) for name in names]
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc


class StorageSweepPlanOperator(_StorageOperator):
    """Finds every key-prefix cell (database + each provider's delimiter listing), deals the
    cells out to ``shards`` and opens the sweep's record. Returns one item per shard."""

    template_fields: Sequence[str] = ("providers", "shards")

    def __init__(self, *, shards: Any = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from csl.errors import StorageError
        from csl.storage import integrity

        options = _options(context["params"], self.settings)
        providers = self.storage_providers()
        shards = _int_param(self.shards, "shards")
        with self.database() as db, db.connect_direct() as conn:
            try:
                sweep_id, cells, plan = integrity.plan_sweep(conn, providers, run_key=context["ti"].run_id,
                                                             shards=shards, options=options)
            except StorageError as exc:  # down: retry later; refusing (credentials, bucket): fail now
                raise _storage_failure(exc, f"cannot list provider {exc.provider!r}: {exc}") from exc
            except (integrity.SweepError, integrity.ListingOrderError) as exc:
                raise AirflowFailException(str(exc)) from exc
        context["ti"].xcom_push(key="plan", value={"sweep_id": sweep_id, "cells": cells, "shards": len(plan),
                                                   "providers": [p.name for p in providers]})
        log.info("sweep %s: %s cells in %s shards over providers %s", sweep_id, len(cells), len(plan),
                 [p.name for p in providers])
        return [{"sweep_id": sweep_id, "shard": i, "cells": shard_cells} for i, shard_cells in enumerate(plan)]


class StorageSweepShardOperator(_StorageOperator):
    """Merges the database inventory with every provider's listing for the shard's cells and
    writes their findings in one transaction. A provider that cannot be listed fails the
    shard (retried), naming the provider; nothing is written for it."""

    template_fields: Sequence[str] = ("providers", "shard")
    template_fields_renderers: ClassVar[dict[str, str]] = {"shard": "json"}
    ui_color = "#fdf1e6"

    def __init__(self, *, shard: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.errors import StorageError
        from csl.storage import integrity

        shard = self.shard
        cells = shard["cells"]
        context["shard_name"] = f"{shard['shard']}: {cells[0]} … {cells[-1]}" if cells else str(shard["shard"])
        options = _options(context["params"], self.settings)
        providers = self.storage_providers()
        with self.database() as db:
            try:
                summary = integrity.sweep_shard(lambda: db.connect_direct(autocommit=False), providers,
                                                sweep_id=shard["sweep_id"], shard=shard["shard"], cells=cells,
                                                options=options)
            except integrity.ListingOrderError as exc:
                self._failed(db, shard, exc)
                raise AirflowFailException(str(exc)) from exc
            except StorageError as exc:
                self._failed(db, shard, exc)
                raise _storage_failure(exc, f"shard {shard['shard']}: provider {exc.provider!r} failed: {exc}") from exc
        context["ti"].xcom_push(key="shard", value=summary)
        return summary

    @staticmethod
    def _failed(db: Any, shard: dict[str, Any], exc: BaseException) -> None:
        from csl.storage import integrity

        with db.connect_direct() as conn:
            integrity.record_shard_failure(conn, sweep_id=shard["sweep_id"], shard=shard["shard"],
                                           cells=shard["cells"], error=exc)


class StorageSweepReportOperator(CslBaseOperator):
    """Closes the sweep: totals per finding kind and provider, bytes, duration; fails naming
    the shards (and providers) that did not finish. Its outlets (the findings Asset) are
    emitted only when every shard swept."""

    def __init__(self, *, plan_task_id: str = "plan", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from csl.storage import integrity

        ti = context["ti"]
        plan = self.plan_of(context, self.plan_task_id, "plan")
        options = _options(context["params"], self.settings)
        with self.database() as db:
            with db.connect_direct() as conn:
                summary = integrity.finish_sweep(conn, sweep_id=plan["sweep_id"], shards=plan["shards"],
                                                 all_cells=plan["cells"], options=options)
            failed = summary["failed"] + [{"shard": s, "provider": None, "error": "never ran"}
                                          for s in summary["not_run"]]
            self.record(db, context, status="failed" if failed else "success",
                        outcome=summary,
                        error="; ".join(f"shard {f['shard']}: {f['error']}" for f in failed) or None)
        ti.xcom_push(key="summary", value=summary)
        counts = {kind: sum(per.values()) for kind, per in summary["findings"].items()}
        log.info("sweep %s: %s references, listed %s, findings %s (new %s, closed %s), open now %s",
                 summary["sweep_id"], summary["db_refs"], summary["listed"], counts, summary["new"],
                 summary["closed"], summary["open_findings"])
        if failed:
            providers = sorted({f["provider"] for f in failed if f["provider"]})
            raise AirflowFailException(
                f"{len(failed)} of {summary['shards']} shards did not sweep"
                + (f" (provider {', '.join(map(repr, providers))} failed)" if providers else "")
                + ": " + "; ".join(f"shard {f['shard']}: {f['error']}" for f in failed)[:1500])
        return summary


class StorageCleanupOperator(_StorageOperator):
    """Expired temporary uploads and old orphans → quarantine (never deleted here), capped.

    ``dry_run`` None (the Param's default) is automatic: a dry run unless the schedule started
    the run. XCom ``cleanup`` and the return value hold counts and a bounded sample
    (``csl.storage.cleanup.summarize``); every candidate is in the log."""

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
        from csl.storage import cleanup

        run_type = getattr(context["dag_run"], "run_type", None)
        scheduled = getattr(run_type, "value", run_type) == "scheduled"
        dry_run = cleanup.resolve_dry_run(_optional_bool(self.dry_run), scheduled=scheduled)
        log.info("%s run (dry_run Param %r, run type %s)", "dry" if dry_run else "real", self.dry_run, run_type)
        providers = self.storage_providers()
        with self.database() as db:
            try:
                cleanup.check_temp_prefix(str(self.temp_prefix))
                with db.connect_direct() as conn:
                    result = cleanup.run_cleanup(
                        conn, providers, run_key=context["ti"].run_id, temp_prefix=str(self.temp_prefix),
                        temp_ttl_h=float(self.temp_ttl_h), orphan_grace_h=float(self.orphan_grace_h),
                        max_objects=_int_param(self.max_objects, "max_objects"), max_share=float(self.max_share),
                        dry_run=dry_run, purge_quarantine=_truthy(self.purge_quarantine),
                        quarantine_retention_days=_int_param(self.quarantine_retention_days,
                                                             "quarantine_retention_days"),
                        buckets=sorted({p.bucket for p in self.settings.storage}))
            except cleanup.CleanupError as exc:  # a cap, a bad prefix or share: nothing was touched
                self.record(db, context, status="failed", error=str(exc))
                raise AirflowFailException(str(exc)) from exc
            outcome = cleanup.summarize(result)
            self.record(db, context, status="success", outcome=outcome)
        verb = "would move" if result["dry_run"] else "moved"
        for c in result["candidates"]:
            log.info("%s %s on %s (%s, %s bytes, last modified %s)", verb, c["key"], c["provider"], c["reason"],
                     c["size"], c["last_modified"])
        for c in result["kept_referenced"]:
            log.info("kept %s on %s (%s): a row refers to it", c["key"], c["provider"], c["reason"])
        if result["refused"]:
            log.warning("a real run would be refused: %s", result["refused"])
        context["ti"].xcom_push(key="cleanup", value=outcome)
        return outcome


class StoragePublicationOperator(CslBaseOperator):
    """Makes every public provider's published bucket hold exactly the approved samples
    (``csl.storage.publication``): copies verified by SHA-256, withdrawals capped, the edge purged.
    XCom ``publication`` and the return value hold counts and a bounded sample of keys."""

    template_fields: Sequence[str] = ("dry_run", "max_withdrawals", "max_share")

    def __init__(self, *, dry_run: Any = False, max_withdrawals: Any = 1000, max_share: Any = 0.10,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run, self.max_withdrawals, self.max_share = dry_run, max_withdrawals, max_share

    def execute(self, context: Any) -> dict[str, Any]:
        from contextlib import ExitStack

        from csl.cdn import VarnishEdge
        from csl.storage import StorageProvider, publication

        providers = [StorageProvider(p) for p in self.settings.storage if p.published_bucket]
        if not providers:
            raise AirflowFailException("no storage provider publishes anything (set public_bucket on one)")
        dry_run = _truthy(self.dry_run)
        outcomes = []
        with self.database() as db, ExitStack() as stack:
            edge = stack.enter_context(VarnishEdge(self.settings.edge)) if self.settings.edge.enabled else None
            conn = stack.enter_context(db.connect_direct())
            for provider in providers:
                try:
                    result = publication.run_publication(
                        conn, provider, run_key=context["ti"].run_id, dry_run=dry_run,
                        max_withdrawals=_int_param(self.max_withdrawals, "max_withdrawals"),
                        max_share=float(self.max_share), edge=edge,
                        buckets=sorted({p.bucket for p in self.settings.storage}))
                except publication.PublicationError as exc:  # a cap or a bad Param: recorded, nothing changed
                    # (a busy lock or an unavailable provider is Transient: retried by map_errors)
                    self.record(db, context, status="failed", error=str(exc))
                    raise AirflowFailException(str(exc)) from exc
                for key, reason in result["publish"]:
                    log.info("%s %s (%s)", "would publish" if dry_run else "published", key, reason)
                for key in result["withdraw"]:
                    log.info("%s %s", "would withdraw" if dry_run else "withdrew", key)
                for key in result["missing"]:
                    log.warning("approved but its original is missing: %s", key)
                for key in result["unpublishable"]:
                    log.warning("approved but outside the published folders, not published: %s", key)
                for refused in result["copy_refused"]:
                    log.warning("not published: %s (%s)", refused["key"], refused["problem"])
                if result["refused"]:
                    log.warning("a real run would be refused: %s", result["refused"])
                outcomes.append(publication.summarize(result))
            failed = [o for o in outcomes if o["copy_failed"]]
            outcome = {"providers": outcomes, "dry_run": dry_run}
            error = "; ".join(f"provider {o['provider']!r}: {o['copy_failed']} copies did not match their sound "
                              "original (deleted, not published; a retry copies them again)" for o in failed)
            self.record(db, context, status="failed" if failed else "success",
                        outcome=outcome, error=error or None)
        context["ti"].xcom_push(key="publication", value=outcome)
        if failed:
            raise AirflowException(error)  # retried: a copy can fail in transit
        return outcome
