"""Cleanup to quarantine (never deleted), its cap and dry run, restore — on the real providers."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from csl import cleanup
from csl.integrity import SweepOptions, run_sweep
from csl.storage import StorageProvider


@pytest.fixture
def providers(settings):
    return [StorageProvider(settings.provider("primary")), StorageProvider(settings.provider("fallback"))]


@pytest.fixture
def conn(settings):
    with psycopg.connect(settings.database.primary_url, autocommit=True) as connection:
        yield connection


def _keys(provider: StorageProvider, prefix: str) -> set[str]:
    return {o.key for o in provider.iter_objects(prefix)}


def test_expired_uploads_move_to_quarantine_within_the_cap_and_come_back(platform, settings, providers, conn):
    primary = providers[0]
    temp = f"tmp/{uuid.uuid4().hex[:8]}/"
    uploads = [f"{temp}{i}.wav" for i in range(3)]
    for key in uploads:
        primary.put(key, b"RIFF" + key.encode())
    later = datetime.now(timezone.utc) + timedelta(hours=25)
    kwargs = dict(temp_prefix=temp, temp_ttl_h=24, orphan_grace_h=10_000, now=later)

    fresh = cleanup.run_cleanup(conn, providers, run_key="t-fresh", **{**kwargs, "now": None}, dry_run=False)
    assert fresh["candidates"] == []  # a minute-old upload is not expired

    dry = cleanup.run_cleanup(conn, providers, run_key="t-dry", dry_run=True, **kwargs)
    assert sorted(c["key"] for c in dry["candidates"]) == uploads and dry["moved"] == []
    assert _keys(primary, temp) == set(uploads)  # the dry run moved nothing

    with pytest.raises(cleanup.CapExceeded, match="3 objects.*max_objects=2.*nothing was touched"):
        cleanup.run_cleanup(conn, providers, run_key="t-cap", dry_run=False, max_objects=2, **kwargs)
    assert _keys(primary, temp) == set(uploads)

    run_key = f"t-{uuid.uuid4().hex[:6]}"
    done = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, **kwargs)
    assert {m["key"] for m in done["moved"]} == set(uploads) and done["by_reason"] == {"expired_upload": 3}
    assert _keys(primary, temp) == set()
    held = {m["quarantine_key"] for m in done["moved"]}
    assert all(k.startswith(f"_quarantine/{later:%Y%m%d}/{temp}") for k in held)
    assert all(primary.get(q) == b"RIFF" + q.split("/", 2)[2].encode() for q in held)

    again = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, **kwargs)
    assert again["candidates"] == []  # a rerun finds nothing left to do

    restored = cleanup.restore(conn, providers, run_key=run_key)
    assert {r["key"] for r in restored} == set(uploads)
    assert _keys(primary, temp) == set(uploads) and all(not primary.exists(q) for q in held)
    with pytest.raises(cleanup.CleanupError, match="nothing in quarantine"):
        cleanup.restore(conn, providers, run_key=run_key)
    for key in uploads:
        primary.delete(key)


def test_orphans_past_their_grace_are_quarantined_and_the_sweep_stops_reporting_them(platform, settings, providers,
                                                                                     conn):
    orphans = platform["defects"]["orphan"]
    run_sweep(settings, run_key=f"t-{uuid.uuid4()}", shards=2, workers=1, options=SweepOptions())
    early = cleanup.run_cleanup(conn, providers, run_key="t-early", dry_run=True, orphan_grace_h=72,
                                temp_prefix="tmp/none/")
    assert early["candidates"] == []  # reported moments ago: still inside the grace period
    later = datetime.now(timezone.utc) + timedelta(hours=73)
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    moved = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, orphan_grace_h=72,
                                temp_prefix="tmp/none/", now=later)
    try:
        assert sorted(m["key"] for m in moved["moved"]) == sorted(orphans)
        assert all(m["reason"] == "orphan" and m["provider"] == "primary" for m in moved["moved"])
        after = run_sweep(settings, run_key=f"t-{uuid.uuid4()}", shards=2, workers=1, options=SweepOptions())
        assert "orphan" not in after["findings"]  # quarantine is not swept as orphans
        open_orphans = conn.execute("SELECT count(*) FROM csl_ops.storage_findings WHERE kind = 'orphan' "
                                    "AND resolved_at IS NULL AND object_key = ANY(%s)", (orphans,)).fetchone()
        assert open_orphans == (0,)
    finally:
        cleanup.restore(conn, providers, run_key=run_key)
    assert all(providers[0].exists(k) for k in orphans)
    run_sweep(settings, run_key=f"t-{uuid.uuid4()}", shards=2, workers=1, options=SweepOptions())


def test_purge_deletes_old_quarantine_only_when_asked(platform, settings, providers, conn):
    primary = providers[0]
    temp = f"tmp/{uuid.uuid4().hex[:8]}/"
    primary.put(temp + "old.wav", b"RIFF-old")
    later = datetime.now(timezone.utc) + timedelta(days=2)
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    moved = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, temp_prefix=temp, now=later)
    held = moved["moved"][0]["quarantine_key"]
    conn.execute("UPDATE csl_ops.storage_quarantine SET moved_at = now() - interval '40 days' WHERE run_key = %s",
                 (run_key,))
    kept = cleanup.run_cleanup(conn, providers, run_key=run_key + "-b", dry_run=False, temp_prefix=temp, now=later)
    assert kept["purged"] == [] and primary.exists(held)  # not asked: kept
    dry = cleanup.run_cleanup(conn, providers, run_key=run_key + "-c", dry_run=True, temp_prefix=temp, now=later,
                              purge_quarantine=True)
    assert [p["quarantine_key"] for p in dry["purged"]] == [held] and primary.exists(held)
    done = cleanup.run_cleanup(conn, providers, run_key=run_key + "-d", dry_run=False, temp_prefix=temp, now=later,
                               purge_quarantine=True)
    assert [p["quarantine_key"] for p in done["purged"]] == [held] and not primary.exists(held)


def test_bad_requests_are_refused_before_anything_moves(platform, providers, conn):
    with pytest.raises(cleanup.CleanupError, match="temp_prefix"):
        cleanup.run_cleanup(conn, providers, run_key="t-bad", temp_prefix="_quarantine/x/")
    with pytest.raises(cleanup.CleanupError, match="max_objects"):
        cleanup.run_cleanup(conn, providers, run_key="t-bad", max_objects=-1)
