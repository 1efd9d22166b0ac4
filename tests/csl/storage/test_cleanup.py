"""Cleanup to quarantine (never deleted), its cap and dry run, restore — on the real providers."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from csl.storage import StorageProvider, cleanup
from csl.storage.integrity import SweepOptions, run_sweep


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
    later = datetime.now(UTC) + timedelta(hours=25)
    kwargs = {"temp_prefix": temp, "temp_ttl_h": 24, "orphan_grace_h": 10_000, "now": later}

    fresh = cleanup.run_cleanup(conn, providers, run_key="t-fresh", **{**kwargs, "now": None}, dry_run=False)
    assert fresh.candidates == []  # a minute-old upload is not expired

    dry = cleanup.run_cleanup(conn, providers, run_key="t-dry", dry_run=True, **kwargs)
    assert sorted(c["key"] for c in dry.candidates) == uploads and dry.moved == []
    assert _keys(primary, temp) == set(uploads)  # the dry run moved nothing

    with pytest.raises(cleanup.CapExceeded, match="3 objects.*max_objects=2.*nothing was touched"):
        cleanup.run_cleanup(conn, providers, run_key="t-cap", dry_run=False, max_objects=2, **kwargs)
    assert _keys(primary, temp) == set(uploads)

    run_key = f"t-{uuid.uuid4().hex[:6]}"
    done = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, **kwargs)
    assert {m["key"] for m in done.moved} == set(uploads) and done.by_reason == {"expired_upload": 3}
    assert _keys(primary, temp) == set()
    held = {m["quarantine_key"] for m in done.moved}
    assert all(k.startswith(f"_quarantine/{later:%Y%m%d}/{temp}") for k in held)
    assert all(primary.get(q) == b"RIFF" + q.split("/", 2)[2].encode() for q in held)

    again = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, **kwargs)
    assert again.candidates == []  # a rerun finds nothing left to do

    restored = cleanup.restore(conn, providers, run_key=run_key)
    assert {r["key"] for r in restored["restored"]} == set(uploads) and restored["skipped"] == []
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
    assert early.candidates == []  # reported moments ago: still inside the grace period
    later = datetime.now(UTC) + timedelta(hours=73)
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    moved = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, orphan_grace_h=72,
                                temp_prefix="tmp/none/", now=later)
    try:
        # other sessions' leftovers on a reused stack may be orphans too: the seeded ones must be among them
        assert set(orphans) <= {m["key"] for m in moved.moved if m["provider"] == "primary"}
        assert all(m["reason"] == "orphan" for m in moved.moved)
        after = run_sweep(settings, run_key=f"t-{uuid.uuid4()}", shards=2, workers=1, options=SweepOptions())
        assert "orphan" not in after.findings  # quarantine is not swept as orphans
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
    later = datetime.now(UTC) + timedelta(days=2)
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    moved = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, temp_prefix=temp, now=later)
    held = moved.moved[0]["quarantine_key"]
    conn.execute("UPDATE csl_ops.storage_quarantine SET moved_at = now() - interval '40 days' WHERE run_key = %s",
                 (run_key,))
    kept = cleanup.run_cleanup(conn, providers, run_key=run_key + "-b", dry_run=False, temp_prefix=temp, now=later)
    assert kept.purged == [] and primary.exists(held)  # not asked: kept
    dry = cleanup.run_cleanup(conn, providers, run_key=run_key + "-c", dry_run=True, temp_prefix=temp, now=later,
                              purge_quarantine=True)
    assert held in [p["quarantine_key"] for p in dry.purged] and primary.exists(held)
    done = cleanup.run_cleanup(conn, providers, run_key=run_key + "-d", dry_run=False, temp_prefix=temp, now=later,
                               purge_quarantine=True)
    assert held in [p["quarantine_key"] for p in done.purged] and not primary.exists(held)


def test_bad_requests_are_refused_before_anything_moves(platform, providers, conn):
    with pytest.raises(cleanup.CleanupError, match="temp_prefix"):
        cleanup.run_cleanup(conn, providers, run_key="t-bad", temp_prefix="_quarantine/x/")
    with pytest.raises(cleanup.CleanupError, match="max_objects"):
        cleanup.run_cleanup(conn, providers, run_key="t-bad", max_objects=-1)
    for share in (0, 1.5, float("nan")):
        with pytest.raises(cleanup.CleanupError, match="max_share"):
            cleanup.run_cleanup(conn, providers, run_key="t-bad", max_share=share)


# -- issue 12, items 9 and 10 ------------------------------------------------------------------
LATER = datetime.now(UTC) + timedelta(hours=25)


@pytest.fixture
def temp(providers):
    """A temporary-upload folder of the test's own; everything under it (and its quarantine) goes afterwards."""
    folder = f"tmp/t{uuid.uuid4().hex[:8]}/"
    yield folder
    for p in providers:
        for prefix in (folder, "_quarantine/"):
            for o in p.iter_objects(prefix):
                if folder in o.key:
                    p.delete(o.key)


@pytest.mark.parametrize("prefix", ["samples/", "/", "../", "", "tmp", "tmp/../samples/", "_quarantine/",
                                    "uploads/", "tmp//", "generations/tmp/"])
def test_only_temporary_folders_are_cleaned_as_temporary(platform, conn, settings, prefix):
    unreachable = StorageProvider(replace(settings.provider("primary"), endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(cleanup.CleanupError, match=r"temp_prefix must be one of 'tmp/', 'uploads/tmp/'"):
        cleanup.run_cleanup(conn, [unreachable], run_key="t-bad", temp_prefix=prefix, dry_run=False)


def test_every_candidate_is_checked_against_every_reference_column(platform, settings, providers, conn, temp):
    primary, fallback = providers
    keys = [f"{temp}{name}" for name in ("sample.wav", "avatar.png", "result.mp3", "loose.wav")]
    for key in keys:
        fallback.put(key, b"RIFF" + key.encode())
    orphan = f"avatars/t{uuid.uuid4().hex[:8]}/me.png"  # reported as an orphan before the avatar was set
    fallback.put(orphan, b"\x89PNG\r\n\x1a\n" + bytes(8))
    run_sweep(settings, run_key=f"t-{uuid.uuid4()}", shards=1, workers=1,
              options=SweepOptions(prefix=orphan.rsplit("/", 1)[0] + "/"))  # nothing refers to it yet
    users = [str(uuid.uuid4()) for _ in range(2)]
    sample = str(uuid.uuid4())
    endpoint = fallback.settings.endpoint_url
    conn.execute("INSERT INTO users (id, email, avatar_url) VALUES (%s, %s, %s), (%s, %s, %s)",
                 (users[0], f"{users[0]}@example.org", f"https://cdn.culturalsoundlab.com/audio/{keys[1]}",
                  users[1], f"{users[1]}@example.org", f"{endpoint}/{fallback.bucket}/{orphan}?v=2"))
    conn.execute("INSERT INTO audio_samples (id, title, file_url, file_size, duration, format, sample_rate, "
                 "cultural_origin, instrument_type, usage_rights, price_personal, price_commercial, price_enterprise, "
                 "contributor_id) SELECT %s, 't', %s, 10, 1, 'wav', 44100, 'x', 'y', usage_rights, 1, 2, 3, "
                 "contributor_id FROM audio_samples LIMIT 1",
                 (sample, f"https://{fallback.bucket}.s3.amazonaws.com/{keys[0]}"))
    generation = conn.execute("UPDATE generations SET result_url = %s WHERE id = (SELECT id FROM generations "
                              "WHERE result_url IS NULL LIMIT 1) RETURNING id", (f"/audio/{keys[2]}",)).fetchone()[0]
    try:
        done = cleanup.run_cleanup(conn, [fallback], run_key=f"t-{uuid.uuid4().hex[:6]}", temp_prefix=temp,
                                   orphan_grace_h=24, now=LATER, dry_run=False)
        assert {m["key"] for m in done.moved if m["key"] in keys + [orphan]} == {keys[3]}
        assert {(c["key"], c["reason"]) for c in done.kept_referenced} >= {
            (keys[0], "expired_upload"), (keys[1], "expired_upload"), (keys[2], "expired_upload"), (orphan, "orphan")}
        assert all(fallback.exists(k) for k in keys[:3] + [orphan])
    finally:
        for m in done.moved if "done" in locals() else []:  # anything else old enough goes back
            if m["key"] != keys[3]:
                cleanup.restore(conn, providers, key=m["key"])
        conn.execute("DELETE FROM audio_samples WHERE id = %s", (sample,))
        conn.execute("DELETE FROM users WHERE id = ANY(%s::uuid[])", (users,))
        conn.execute("UPDATE generations SET result_url = NULL WHERE id = %s", (generation,))
        conn.execute("UPDATE csl_ops.storage_findings SET resolved_at = now() WHERE object_key = %s", (orphan,))
        fallback.delete(orphan)


def test_a_run_moving_too_large_a_share_of_a_provider_is_refused(platform, providers, conn, temp):
    primary = providers[0]
    keys = [f"{temp}{i}.wav" for i in range(3)]
    for key in keys:
        primary.put(key, b"RIFF" + key.encode())
    total = sum(1 for o in primary.iter_objects("") if not o.key.startswith("_quarantine/"))
    share = 2 / total  # three candidates are more than that
    with pytest.raises(cleanup.CapExceeded, match=rf"3 of the {total} objects on provider 'primary'.*max_share"):
        cleanup.run_cleanup(conn, [primary], run_key="t-share", temp_prefix=temp, now=LATER, dry_run=False,
                            max_share=share)
    assert {o.key for o in primary.iter_objects(temp)} == set(keys)  # nothing moved
    dry = cleanup.run_cleanup(conn, [primary], run_key="t-share", temp_prefix=temp, now=LATER, max_share=share)
    assert "max_share" in dry.refused and len(dry.candidates) == 3 and dry.listed == {"primary": total}
    ok = cleanup.run_cleanup(conn, [primary], run_key=f"t-{uuid.uuid4().hex[:6]}", temp_prefix=temp, now=LATER,
                             dry_run=False, max_share=4 / total)
    assert ok.refused is None and len(ok.moved) == 3


def test_restore_refuses_to_overwrite_what_lives_at_the_key_now_unless_forced(platform, providers, conn, temp):
    primary = providers[0]
    key = f"{temp}take.wav"
    primary.put(key, b"RIFF-original")
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    held = cleanup.run_cleanup(conn, providers, run_key=run_key, temp_prefix=temp, now=LATER,
                               dry_run=False).moved[0]["quarantine_key"]
    primary.put(key, b"RIFF-uploaded-again")  # the user uploaded a new take under the same key
    with pytest.raises(cleanup.RestoreConflict, match=rf"overwrite '{key}' on provider 'primary'.*--force"):
        cleanup.restore(conn, providers, run_key=run_key)
    assert primary.get(key) == b"RIFF-uploaded-again" and primary.exists(held)  # nothing moved
    done = cleanup.restore(conn, providers, run_key=run_key, force=True)
    assert [r["key"] for r in done["restored"]] == [key] and primary.get(key) == b"RIFF-original"
    # the same object back at its key (an interrupted restore) is no conflict
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    cleanup.run_cleanup(conn, providers, run_key=run_key, temp_prefix=temp, now=LATER, dry_run=False)
    row = conn.execute("SELECT quarantine_key FROM csl_ops.storage_quarantine WHERE run_key = %s",
                       (run_key,)).fetchone()
    primary.copy(row[0], key)
    assert cleanup.restore(conn, providers, run_key=run_key)["restored"][0]["key"] == key
    assert not primary.exists(row[0])


def test_restore_and_purge_on_a_subset_of_providers_skip_the_others_and_say_so(platform, settings, providers, conn,
                                                                               temp):
    primary, fallback = providers
    for p in providers:
        p.put(f"{temp}{p.name}.wav", b"RIFF" + p.name.encode())
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    moved = cleanup.run_cleanup(conn, providers, run_key=run_key, temp_prefix=temp, now=LATER, dry_run=False)
    assert {m["provider"] for m in moved.moved} == {"primary", "fallback"}

    only_fallback = cleanup.restore(conn, [fallback], run_key=run_key)
    assert [(r["provider"], r["key"]) for r in only_fallback["restored"]] == [("fallback", f"{temp}fallback.wav")]
    assert [(s["provider"], s["key"]) for s in only_fallback["skipped"]] == [("primary", f"{temp}primary.wav")]
    assert "not among ['fallback']" in only_fallback["skipped"][0]["reason"]
    assert fallback.exists(f"{temp}fallback.wav") and not primary.exists(f"{temp}primary.wav")
    with pytest.raises(cleanup.CleanupError, match=r"on provider\(s\) \['primary'\].*nothing restored"):
        cleanup.restore(conn, [fallback], run_key=run_key)

    again = cleanup.run_cleanup(conn, providers, run_key=run_key + "-2", temp_prefix=temp, now=LATER, dry_run=False)
    assert {m["provider"] for m in again.moved} == {"fallback"}
    conn.execute("UPDATE csl_ops.storage_quarantine SET moved_at = now() - interval '40 days' "
                 "WHERE run_key = ANY(%s)", ([run_key, run_key + "-2"],))
    purged = cleanup.purge(conn, [primary], retention_days=30, max_objects=100, dry_run=False)
    assert f"{temp}primary.wav" in [p["key"] for p in purged["purged"]]
    assert f"{temp}fallback.wav" in [s["key"] for s in purged["skipped"]]
    held = again.moved[0]["quarantine_key"]
    assert fallback.exists(held)  # the fallback's quarantine was not touched
    cleanup.purge(conn, [fallback], retention_days=30, max_objects=100, dry_run=False)
    assert not fallback.exists(held)


def test_a_summary_is_counts_and_a_bounded_sample(platform, providers, conn, temp):
    primary = providers[0]
    for i in range(5):
        primary.put(f"{temp}{i}.wav", b"RIFF")
    result = cleanup.run_cleanup(conn, providers, run_key="t-sum", temp_prefix=temp, now=LATER)
    summary = result.summary(sample=2)
    assert summary["candidates"] == 5 and summary["by_reason"] == {"expired_upload": 5}
    assert len(summary["sample"]) == 2 and summary["sample_truncated"] is True and summary["dry_run"] is True
    assert len(json.dumps(replace(result, candidates=result.candidates * 100_000).summary())) < 50_000


def test_manual_runs_are_dry_runs_unless_asked_the_schedule_does_the_work():
    assert cleanup.resolve_dry_run(None, scheduled=False) is True
    assert cleanup.resolve_dry_run(None, scheduled=True) is False
    assert cleanup.resolve_dry_run(False, scheduled=False) is False
    assert cleanup.resolve_dry_run(True, scheduled=True) is True


def test_cli_restore_refuses_a_conflict_in_one_line_and_forces_on_request(platform, providers, conn, temp, stack_env):
    import os
    import subprocess
    import sys

    primary = providers[0]
    key = f"{temp}cli.wav"
    primary.put(key, b"RIFF-original")
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    cleanup.run_cleanup(conn, providers, run_key=run_key, temp_prefix=temp, now=LATER, dry_run=False)
    primary.put(key, b"RIFF-newer")
    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull}
    run = lambda *a: subprocess.run([sys.executable, "-m", "csl", "storage", *a], capture_output=True, text=True,
                                    env=env, timeout=120, check=False)
    refused = run("restore", "--run-key", run_key)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"overwrite '{key}' on provider 'primary'" in refused.stderr and primary.get(key) == b"RIFF-newer"
    forced = run("restore", "--run-key", run_key, "--force")
    assert forced.returncode == 0 and f"restored {key} on primary" in forced.stdout, forced.stderr
    assert primary.get(key) == b"RIFF-original"
    bad = run("cleanup", "--temp-prefix", "samples/")
    assert bad.returncode == 2 and "temp_prefix must be one of" in bad.stderr and bad.stderr.count("\n") == 1


def test_a_cleanup_run_logs_every_candidate_itself(platform, providers, conn, temp, caplog):
    import logging

    providers[0].put(f"{temp}logged.wav", b"RIFF")
    caplog.set_level(logging.INFO, logger="csl.storage.cleanup")
    cleanup.run_cleanup(conn, providers, run_key="t-log", temp_prefix=temp, now=LATER)
    assert any(r.getMessage().startswith(f"would move {temp}logged.wav on primary (expired_upload, 4 bytes")
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_quarantining_an_object_takes_its_published_copy_and_owes_the_edge_a_purge(platform, settings, providers,
                                                                                   conn):
    primary = providers[0]
    published = primary.published()
    temp = f"tmp/{uuid.uuid4().hex[:8]}/"
    for name in ("served.wav", "private.wav"):
        primary.put(f"{temp}{name}", b"RIFF " + name.encode())
    published.put(f"{temp}served.wav", b"RIFF served.wav")
    later = datetime.now(UTC) + timedelta(hours=25)
    run_key = f"t-{uuid.uuid4().hex[:6]}"
    done = cleanup.run_cleanup(conn, providers, run_key=run_key, dry_run=False, temp_prefix=temp, temp_ttl_h=24,
                               orphan_grace_h=10_000, now=later, edge_base_url="https://cdn.example.com/audio")
    assert {m["key"] for m in done.moved} == {f"{temp}served.wav", f"{temp}private.wav"}
    assert not published.exists(f"{temp}served.wav")
    owed = conn.execute("SELECT provider, object_key, public_url, tags, reason FROM csl_ops.cdn_purge_queue "
                        "WHERE source_run = %s AND purged_at IS NULL", (run_key,)).fetchall()
    assert owed == [("primary", f"{temp}served.wav", f"https://cdn.example.com/audio/{temp}served.wav",
                     [f"obj:/{published.bucket}/{temp}served.wav"], "quarantined")]
    restored = cleanup.restore(conn, providers, run_key=run_key)
    assert len(restored["restored"]) == 2
    for name in ("served.wav", "private.wav"):
        primary.delete(f"{temp}{name}")
