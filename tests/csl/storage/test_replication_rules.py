"""Replication's rules without servers: which copy is right, what must be read first, the
parameters, the part size (issue 14)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from csl.storage.replication import (
    ReplicationError,
    ReplicationOptions,
    decide,
    needs_reading,
    resolve_mode,
)
from csl.storage.transfer import MAX_PARTS, MiB, StoredObject, composite_checksum, part_size_for

NAMES = ["primary", "fallback", "aws"]
A, B = "a" * 64, "b" * 64


def obj(size: int = 100, sha: str | None = A) -> StoredObject:
    return StoredObject(key="k", size=size, sha256=sha, etag="e", checksum_sha256=None, checksum_type=None,
                        content_type="audio/wav", metadata={"sha256": sha} if sha else {})


def plan(heads, **kw):
    kw.setdefault("referenced", True)
    kw.setdefault("database_size", 100)
    return decide("k", heads, names=NAMES, **kw)


def test_a_missing_copy_comes_from_the_copy_that_is_right_the_primary_first():
    d = plan({"primary": obj(), "fallback": obj(), "aws": None})
    assert [(c.source, c.destination, c.reason, c.replaces) for c in d.copies] == [
        ("primary", "aws", "missing", False)]
    d = plan({"primary": None, "fallback": obj(), "aws": obj()}, named={"primary": "fallback_only"})
    assert [(c.source, c.destination, c.reason) for c in d.copies] == [("fallback", "primary", "fallback_only")]


def test_a_copy_read_and_proven_is_preferred_as_the_source():
    d = plan({"primary": obj(), "fallback": obj(), "aws": None}, digests={"fallback": A})
    assert d.copies[0].source == "fallback"


def test_wrong_size_wrong_metadata_and_rotten_bytes_are_replaced():
    d = plan({"primary": obj(), "fallback": obj(size=50), "aws": obj(sha=B)}, digests={"aws": B, "primary": A})
    # aws holds other bytes that match its own metadata: that is a second truth, not a wrong copy
    assert d.conflict and "differ" in d.conflict and not d.copies
    d = plan({"primary": obj(), "fallback": obj(size=50), "aws": obj()}, digests={"aws": B})
    assert {(c.destination, c.reason, c.replaces) for c in d.copies} == {
        ("fallback", "size_mismatch", True), ("aws", "corrupt", True)}
    assert all(c.source == "primary" for c in d.copies)


def test_no_copy_no_truth_and_a_size_no_copy_has_are_conflicts():
    assert plan({n: None for n in NAMES}).conflict == "no provider holds a copy"
    d = plan({"primary": obj(), "fallback": obj(), "aws": None}, digests={"primary": B, "fallback": B})
    assert d.conflict == "no copy's bytes hash to its sha256 metadata" and not d.copies
    d = plan({"primary": obj(size=90), "fallback": obj(size=90), "aws": None})
    assert d.conflict == "the database size 100 matches no copy"
    assert d.conflict_detail()["copies"]["primary"] == {"size": 90, "sha256": A, "etag": "e"}
    assert plan({"primary": obj(sha=None), "fallback": None, "aws": None}).conflict


def test_an_unreferenced_key_is_not_replicated():
    d = plan({"primary": obj(), "fallback": None, "aws": None}, referenced=False)
    assert d.unreferenced and not d.copies and not d.conflict


def test_a_named_copy_that_looks_right_is_proven_in_place_not_copied():
    d = plan({"primary": obj(), "fallback": obj(), "aws": obj()}, named={"fallback": "queued"})
    assert [(c.destination, c.reason, c.in_place, c.replaces) for c in d.copies] == [
        ("fallback", "verify", True, False)]
    assert not plan({"primary": obj(), "fallback": obj(), "aws": obj()}).copies


def test_source_and_destination_restrict_the_plan():
    heads = {"primary": obj(), "fallback": None, "aws": None}
    d = plan(heads, destinations=["aws"])
    assert [c.destination for c in d.copies] == ["aws"]
    d = plan(heads, sources=["fallback"])  # the fallback holds nothing: no source to copy from
    assert not d.copies and [dest for dest, _ in d.blocked] == ["fallback", "aws"]
    assert "the right copy is on primary" in d.blocked[0][1]


def test_without_a_database_size_disagreeing_copies_are_read_before_deciding():
    heads = {"primary": obj(size=100), "fallback": obj(size=50), "aws": None}
    assert needs_reading(heads, database_size=None) == {"primary", "fallback"}
    assert needs_reading(heads, database_size=100) == set()
    assert needs_reading({"primary": obj(), "fallback": obj(sha=B), "aws": None}, database_size=100) == {
        "primary", "fallback"}
    assert needs_reading({"primary": obj(), "fallback": obj(), "aws": None}, database_size=100,
                         suspects=["fallback", "aws"]) == {"fallback"}


@pytest.mark.parametrize("bad", [{"mode": "all"}, {"max_objects": 0}, {"max_objects": True}, {"concurrency": 65},
                                 {"multipart_threshold_mb": 4}, {"dry_run": "yes"}, {"prefix": "a\nb"},
                                 {"source": "primary", "destination": "primary"}, {"source": ""},
                                 {"max_bytes": "1"}])
def test_bad_parameters_are_refused_naming_them(bad):
    with pytest.raises(ReplicationError, match=next(iter(bad)).split("_")[0]):
        ReplicationOptions(**bad)


def test_params_none_means_the_default_and_unknown_names_are_errors():
    options = ReplicationOptions.from_params({"mode": "diff", "prefix": None, "max_objects": None, "dry_run": True})
    assert (options.mode, options.prefix, options.max_objects, options.dry_run) == ("diff", "", 10_000, True)
    with pytest.raises(ReplicationError, match="unknown parameter"):
        ReplicationOptions.from_params({"modes": "diff"})


def test_the_mode_follows_how_the_run_started():
    assert resolve_mode(None, run_type="asset_triggered") == "findings"
    assert resolve_mode(None, run_type="scheduled") == "queue"
    assert resolve_mode(None, run_type="manual") == "queue"
    assert resolve_mode("auto", run_type="asset_triggered") == "findings"
    assert resolve_mode("auto", run_type="scheduled") == "queue"
    assert resolve_mode("diff", run_type="asset_triggered") == "diff"


def test_the_part_size_keeps_any_object_under_ten_thousand_parts():
    assert part_size_for(200 * MiB, 8 * MiB) == 8 * MiB
    assert part_size_for(30 * MiB, 5 * MiB) == 5 * MiB
    five_tib = 5 * 1024 ** 4
    size = part_size_for(five_tib, 8 * MiB)
    assert size == 525 * MiB and -(-five_tib // size) == 9_987 <= MAX_PARTS
    for total in (1, 10 * MiB, 77 * 1024 ** 3, five_tib):
        assert -(-total // part_size_for(total, 5 * MiB)) <= MAX_PARTS


def test_the_composite_checksum_is_not_the_files_sha256():
    parts = [b"x" * 10, b"y" * 5]
    digests = [hashlib.sha256(p).digest() for p in parts]
    composite = composite_checksum(digests)
    assert composite.endswith("-2")
    assert composite[:-2] != base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert composite[:-2] == base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
