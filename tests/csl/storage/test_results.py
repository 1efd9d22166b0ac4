"""The storage capability's rules that the Airflow glue and the CLI used to carry, without a stack:
which providers a run works on, the sweep's options from its Params, the typed results and
their dict form, and the decisions "this sweep failed" / "these copies are retried"."""

from __future__ import annotations

import logging

import pytest

from csl.config import Secret, Settings, StorageProviderSettings
from csl.errors import BadInput, ConfigError, ProblemFound, Transient
from csl.storage import configured_buckets, providers_for
from csl.storage.cleanup import CleanupError, CleanupResult, run_cleanup
from csl.storage.integrity import (
    ShardsFailed,
    ShardSummary,
    SweepError,
    SweepOptions,
    SweepPlan,
    SweepSummary,
    shard_label,
)
from csl.storage.publication import (
    CopiesDidNotMatch,
    PublicationError,
    PublicationResult,
    PublicationRun,
    run_publication,
)


def _provider(name: str, bucket: str, **extra) -> StorageProviderSettings:
    return StorageProviderSettings(name=name, kind="minio", bucket=bucket, access_key=Secret("k"),
                                   secret_key=Secret("s"), endpoint_url="http://127.0.0.1:9", **extra)


SETTINGS = Settings(storage=(_provider("primary", "media", public_bucket=True), _provider("fallback", "backup")))


# -- which providers ---------------------------------------------------------------------------
def test_providers_for_gives_every_configured_one_by_default_and_the_named_ones_once_in_order():
    assert [p.name for p in providers_for(SETTINGS)] == ["primary", "fallback"]
    assert [p.name for p in providers_for(SETTINGS, None)] == [p.name for p in providers_for(SETTINGS, [])]
    assert [p.name for p in providers_for(SETTINGS, ["fallback", "primary", "fallback"])] == ["fallback", "primary"]
    assert [p.name for p in providers_for(SETTINGS, published_only=True)] == ["primary"]
    assert providers_for(SETTINGS, ["primary"], max_attempts=1)[0]._max_attempts == 1


def test_providers_for_refuses_an_unknown_name_no_provider_and_none_that_publishes():
    with pytest.raises(ConfigError, match="no provider named 'tertiary'.*primary, fallback"):
        providers_for(SETTINGS, ["primary", "tertiary"])
    with pytest.raises(ConfigError, match="no storage providers configured"):
        providers_for(Settings())
    with pytest.raises(ConfigError, match="'fallback' publishes anything"):
        providers_for(SETTINGS, ["fallback"], published_only=True)
    assert issubclass(ConfigError, BadInput)  # a task fails without retry, the CLI exits 2


def test_configured_buckets_are_every_providers_whichever_are_swept():
    assert configured_buckets(SETTINGS) == ("backup", "media")


# -- the sweep's options from its Params ---------------------------------------------------------
def test_sweep_options_from_the_params_read_an_empty_prefix_as_everything_and_name_every_bucket():
    options = SweepOptions.for_settings(SETTINGS, depth=3, key_order="byte", deep_sample=0.25, prefix=None)
    assert (options.depth, options.key_order, options.deep_rate, options.prefix) == (3, "byte", 0.25, "")
    assert options.buckets == ("backup", "media")
    assert SweepOptions.for_settings(SETTINGS, prefix="samples/0a/").prefix == "samples/0a/"
    assert SweepOptions.for_settings(SETTINGS, deep_sample=1).deep_rate == 1.0


@pytest.mark.parametrize("bad", [{"depth": "2"}, {"depth": True}, {"depth": 9}, {"key_order": "random"},
                                 {"deep_sample": "1%"}, {"deep_sample": 1.5}, {"prefix": 7}])
def test_bad_sweep_params_are_refused_as_bad_input(bad):
    with pytest.raises(SweepError) as refused:
        SweepOptions.for_settings(SETTINGS, **bad)
    assert isinstance(refused.value, BadInput)


# -- the plan and the shards -------------------------------------------------------------------
def test_a_plan_is_the_xcom_plan_and_one_item_per_shard_each_named_by_its_cells():
    plan = SweepPlan(7, ["a/", "b/", "c/"], [["a/", "b/"], ["c/"]], ["primary", "fallback"])
    assert plan.as_dict() == {"sweep_id": 7, "cells": ["a/", "b/", "c/"], "shards": 2,
                              "providers": ["primary", "fallback"]}
    assert plan.shards() == [{"sweep_id": 7, "shard": 0, "cells": ["a/", "b/"]},
                             {"sweep_id": 7, "shard": 1, "cells": ["c/"]}]
    assert [shard_label(s) for s in plan.shards()] == ["0: a/ … b/", "1: c/ … c/"]
    assert shard_label({"sweep_id": 7, "shard": 3, "cells": []}) == "3"


def test_a_shard_summary_is_todays_dict():
    summary = ShardSummary(shard=1, providers=["primary"], cells=2, db_refs=5, listed={"primary": 6},
                           bytes={"primary": 60}, findings={"orphan": {"primary": 1}}, new=1, still_open=0,
                           closed=0, deep_verified=0, duration_s=0.5)
    assert list(summary.as_dict()) == ["shard", "providers", "cells", "db_refs", "listed", "bytes", "findings",
                                       "new", "still_open", "closed", "deep_verified", "duration_s",
                                       "inventory_from", "inventory_lag_s", "reordered"]
    # issue 14: which database served the inventory, and the listings brought into the merge order
    assert summary.as_dict()["inventory_from"] == "primary" and summary.as_dict()["reordered"] == {}
    served = ShardSummary(**{**summary.as_dict(), "inventory_from": "replica", "inventory_lag_s": 0.0,
                             "reordered": {"aws": {"entries": 9, "spilled_runs": 0}}})
    assert served.as_dict()["inventory_from"] == "replica" and served.as_dict()["reordered"]["aws"]["entries"] == 9


def _summary(**changes) -> SweepSummary:
    base = {"sweep_id": 7, "shards": 3, "shards_done": 3, "cells": 9, "db_refs": 10, "listed": {"primary": 11},
            "bytes": {"primary": 99}, "findings": {"missing": {"primary": 1, "fallback": 2}}, "new": 1, "closed": 0,
            "deep_verified": 0, "failed": [], "not_run": [], "providers": ["primary", "fallback"],
            "duration_s": 1.5, "open_findings": {"missing": 3}}
    return SweepSummary(**{**base, **changes})


def test_a_sweep_summary_is_todays_dict_with_errors_only_when_there_are_some():
    summary = _summary()
    assert list(summary.as_dict()) == ["sweep_id", "shards", "shards_done", "cells", "db_refs", "listed", "bytes",
                                       "findings", "new", "closed", "deep_verified", "failed", "not_run",
                                       "providers", "duration_s", "open_findings", "inventory_from", "reordered"]
    assert _summary(inventory_from={"replica": 2, "primary": 1}).as_dict()["inventory_from"] == {"replica": 2,
                                                                                                 "primary": 1}
    errors = [{"shard": 0, "error": "down", "provider": "fallback"}]
    assert _summary(errors=errors).as_dict()["errors"] == errors
    assert summary.finding_counts == {"missing": 3}


def test_a_sweep_whose_shards_all_swept_passes_its_check():
    summary = _summary()
    assert summary.error is None and summary.failures == []
    summary.check()


def test_a_sweep_with_failed_or_unrun_shards_fails_naming_them_and_the_providers():
    summary = _summary(shards_done=1, not_run=[2],
                       failed=[{"shard": 0, "provider": "fallback", "error": "storage provider 'fallback': down"}])
    assert summary.error == "shard 0: storage provider 'fallback': down; shard 2: never ran"
    with pytest.raises(ShardsFailed) as failed:
        summary.check()
    assert str(failed.value) == ("2 of 3 shards did not sweep (provider 'fallback' failed): shard 0: storage "
                                 "provider 'fallback': down; shard 2: never ran")
    assert isinstance(failed.value, ProblemFound) and not isinstance(failed.value, Transient)  # not retried
    with pytest.raises(ShardsFailed, match=r"^1 of 3 shards did not sweep: shard 1: never ran$"):
        _summary(not_run=[1]).check()


# -- cleanup -------------------------------------------------------------------------------------
def _cleanup(**changes) -> CleanupResult:
    candidate = {"provider": "primary", "key": "tmp/a.wav", "reason": "expired_upload", "size": 4, "etag": "e",
                 "last_modified": "2026-01-01T00:00:00+00:00"}
    return CleanupResult(**{"dry_run": True, "candidates": [candidate] * 3, "by_reason": {"expired_upload": 3},
                            "by_provider": {"primary": 3}, **changes})


def test_a_cleanup_result_is_todays_dict_and_its_summary_counts_with_a_bounded_sample():
    result = _cleanup()
    assert list(result.as_dict()) == ["dry_run", "refused", "candidates", "by_reason", "by_provider", "listed",
                                      "kept_referenced", "moved", "purged", "purge_skipped"]
    summary = result.summary(sample=2)
    assert summary == {"dry_run": True, "refused": None, "by_reason": {"expired_upload": 3},
                       "by_provider": {"primary": 3}, "listed": {}, "candidates": 3, "kept_referenced": 0, "moved": 0,
                       "purged": 0, "purge_skipped": 0, "sample": result.candidates[:2], "sample_truncated": True}


def test_a_cleanup_logs_every_candidate_and_the_refusal_a_real_run_would_meet(caplog):
    caplog.set_level(logging.INFO, logger="csl.storage.cleanup")
    _cleanup(refused="3 objects would move")._log()
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    moved = "would move tmp/a.wav on primary (expired_upload, 4 bytes, last modified 2026-01-01T00:00:00+00:00)"
    assert lines[0] == ("csl.storage.cleanup", "INFO", moved)
    assert lines[-1] == ("csl.storage.cleanup", "WARNING", "a real run would be refused: 3 objects would move")
    caplog.clear()
    _cleanup(dry_run=False)._log()
    assert caplog.records[0].getMessage().startswith("moved tmp/a.wav on primary")


@pytest.mark.parametrize("bad", [{"max_objects": "1000"}, {"max_objects": 1.5}, {"max_share": "0.1"},
                                 {"max_share": 0}, {"quarantine_retention_days": "30"}, {"temp_prefix": "samples/"}])
def test_cleanup_params_of_the_wrong_kind_are_refused_before_any_work(bad):
    with pytest.raises(CleanupError):
        run_cleanup(None, [], run_key="t", **bad)  # no connection, no provider: nothing is touched


# -- publication ---------------------------------------------------------------------------------
def _published(**changes) -> PublicationResult:
    return PublicationResult(**{"provider": "primary", "bucket": "media-published", "dry_run": False,
                                "publish": [("samples/a.wav", "new"), ("samples/b.wav", "changed")],
                                "approved": 2, **changes})


def test_a_publication_result_is_todays_dict_and_its_summary():
    result = _published(copy_refused=[{"key": "samples/b.wav", "problem": "copy_failed"}])
    assert list(result.as_dict()) == ["provider", "bucket", "dry_run", "publish", "withdraw", "unfinished",
                                      "missing", "known_corrupt", "unpublishable", "published", "approved",
                                      "refused", "copy_refused", "purge"]
    summary = result.summary(sample=1)
    assert (summary["publish"], summary["publish_sample"], summary["copied"]) == (2, [("samples/a.wav", "new")], 1)
    assert (summary["copy_failed"], summary["corrupt"]) == (1, 0)


def test_copies_that_did_not_match_are_recorded_and_retried_corrupt_originals_are_not():
    failed = _published(copy_refused=[{"key": "samples/b.wav", "problem": "copy_failed"}])
    corrupt = _published(provider="other", copy_refused=[{"key": "samples/a.wav", "problem": "corrupt"}])
    run = PublicationRun((failed, corrupt), False)
    assert run.as_dict() == {"providers": [failed.summary(), corrupt.summary()], "dry_run": False}
    assert run.error == ("provider 'primary': 1 copies did not match their sound original (deleted, not "
                         "published; a retry copies them again)")
    with pytest.raises(CopiesDidNotMatch, match="provider 'primary': 1 copies") as retried:
        run.check()
    assert isinstance(retried.value, Transient)
    clean = PublicationRun((corrupt,), False)
    assert clean.error is None
    clean.check()  # a corrupt original is a finding (the sweep reports it), not a retry


def test_a_publication_logs_what_it_does_key_by_key(caplog):
    caplog.set_level(logging.INFO, logger="csl.storage.publication")
    _published(withdraw=["samples/old.wav"], missing=["samples/gone.wav"],
               copy_refused=[{"key": "samples/b.wav", "problem": "copy_failed"}])._log()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "published samples/a.wav (new)"), ("INFO", "published samples/b.wav (changed)"),
        ("INFO", "withdrew samples/old.wav"), ("WARNING", "approved but its original is missing: samples/gone.wav"),
        ("WARNING", "not published: samples/b.wav (copy_failed)")]
    caplog.clear()
    _published(dry_run=True, publish=[("samples/a.wav", "new")], refused="too many")._log()
    assert [r.getMessage() for r in caplog.records] == ["would publish samples/a.wav (new)",
                                                         "a real run would be refused: too many"]


@pytest.mark.parametrize("bad", [{"max_withdrawals": "1000"}, {"max_withdrawals": -1}, {"max_share": "0.1"},
                                 {"max_share": 1.5}])
def test_publication_params_of_the_wrong_kind_are_refused_before_any_work(bad):
    with pytest.raises(PublicationError):
        run_publication(None, None, run_key="t", dry_run=True, **bad)
