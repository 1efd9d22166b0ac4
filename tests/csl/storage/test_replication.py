"""Replication against the real SeaweedFS providers and PostgreSQL (primary and its streaming
replica): what is missing or wrong is copied from the copy that verifies, streamed, proven by
SHA-256, and what cannot be told apart is left for a person (issue 14)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from csl.config import DatabaseSettings, Settings
from csl.db import Database
from csl.errors import ProviderUnavailable, StorageError
from csl.storage import StorageProvider, integrity, replication
from csl.storage.replication import PlanTooLarge, ReplicationOptions, replicate


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclasses.dataclass
class World:
    settings: Settings
    conn: psycopg.Connection
    rows: list[str]
    tag: str

    def provider(self, name: str, **options) -> StorageProvider:
        return StorageProvider(self.settings.provider(name), **options)

    @property
    def prefix(self) -> str:
        return f"samples/{self.tag}/"

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}.wav"

    def sample(self, n: int, name: str, body: bytes, *, on=("primary", "fallback"), size: int | None = None,
               meta: dict[str, bytes] | None = None) -> str:
        """Row ``n`` refers to ``name``; each provider of ``on`` holds ``body`` (or, from
        ``meta``, other bytes under the same or their own sha256 metadata)."""
        key = self.key(name)
        for where in on:
            data = (meta or {}).get(where, body)
            self.put(where, key, data, sha256=_sha(body) if (meta or {}).get(where + ":claims") else _sha(data))
        self.conn.execute("UPDATE audio_samples SET file_url = %s, file_size = %s WHERE id = %s",
                          (key, len(body) if size is None else size, self.rows[n]))
        return key

    def put(self, where: str, key: str, data: bytes, *, sha256: str | None = None, **extra) -> None:
        p = self.provider(where)
        p.client.put_object(Bucket=p.bucket, Key=key, Body=data, ContentType="audio/wav",
                            CacheControl="public, max-age=86400",
                            Metadata={"sha256": sha256 or _sha(data), "original-name": "take 1.wav",
                                      "contributor": "c-7"}, **extra)

    def body(self, where: str, key: str) -> bytes | None:
        p = self.provider(where)
        return p.get(key) if p.exists(key) else None

    def run(self, **params):
        params.setdefault("mode", "findings")
        params.setdefault("prefix", self.prefix)
        return replicate(self.settings, run_key=f"t-{uuid.uuid4().hex[:8]}", options=ReplicationOptions(**params))

    def sweep(self) -> integrity.SweepSummary:
        return self.sweep_with(self.settings)

    def sweep_with(self, settings: Settings) -> integrity.SweepSummary:
        summary = integrity.run_sweep(settings, run_key=f"sweep-{uuid.uuid4().hex[:8]}", shards=1, workers=1,
                                      options=integrity.SweepOptions(prefix=self.prefix, deep_rate=1.0))
        assert not summary.failures, summary
        return summary

    def open_findings(self) -> set[tuple[str, str, str]]:
        return set(self.conn.execute(
            "SELECT kind, object_key, provider FROM csl_ops.storage_findings WHERE resolved_at IS NULL "
            "AND starts_with(object_key, %s)", (self.prefix,)).fetchall())

    def copies(self, run_id: int) -> dict[tuple[str, str], tuple]:
        return {(r[0], r[1]): r[2:] for r in self.conn.execute(
            "SELECT object_key, destination, status, source, reason, method, verified_by, attempts "
            "FROM csl_ops.replication_copies WHERE run_id = %s", (run_id,))}


def _empty(provider: StorageProvider) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(provider.delete, [o.key for o in provider.iter_objects("")]))
    provider.client.delete_bucket(Bucket=provider.bucket)


def _world_settings(settings: Settings, url: str, tag: str, **fallback) -> Settings:
    database = settings.require_database()
    replica = database.replica_url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
    primary = dataclasses.replace(settings.provider("primary"), bucket=f"rep-{tag}-p",
                                  published_bucket=f"rep-{tag}-p-pub")
    second = dataclasses.replace(settings.provider("fallback"), bucket=f"rep-{tag}-f", **fallback)
    return Settings(database=DatabaseSettings(primary_url=url, replica_url=replica), storage=(primary, second),
                    edge=settings.edge)


@pytest.fixture
def world(settings, platform_db):
    tag = uuid.uuid4().hex[:8]
    own = _world_settings(settings, platform_db, tag)
    made = [StorageProvider(p) for p in own.storage]
    for p in made:
        p.ensure_buckets()
    with psycopg.connect(platform_db, autocommit=True) as conn:
        rows = [r[0] for r in conn.execute("SELECT id::text FROM audio_samples ORDER BY id LIMIT 40")]
        yield World(own, conn, rows, tag)
    for p in made:
        if p.settings.published_bucket:
            _empty(p.published())
        _empty(p)


def test_what_is_missing_or_wrong_is_copied_from_the_copy_that_verifies(world):
    good = os.urandom(70_000)
    fallback_only = world.sample(0, "fallback-only", good, on=("fallback",))
    unreplicated = world.sample(1, "unreplicated", os.urandom(9_000), on=("primary",))
    rotted = bytearray(good)
    rotted[100] ^= 0xFF
    corrupt = world.sample(2, "corrupt", good, meta={"primary": bytes(rotted), "primary:claims": True})
    truncated = world.sample(3, "truncated", good, meta={"fallback": good[:50_000], "fallback:claims": True})
    fine = world.sample(4, "fine", os.urandom(1_000))
    world.sweep()
    assert world.open_findings() == {("fallback_only", fallback_only, "fallback"),
                                     ("missing", unreplicated, "fallback"),
                                     ("checksum_mismatch", corrupt, "primary"),
                                     ("size_mismatch", truncated, "fallback")}

    _plan, summary = world.run()
    summary.check()
    assert (summary.verified, summary.failed, summary.conflicts, summary.status) == (4, 0, 0, "done")
    copies = world.copies(summary.run_id)
    assert {k: v[:3] for k, v in copies.items()} == {
        (fallback_only, "primary"): ("verified", "fallback", "fallback_only"),
        (unreplicated, "fallback"): ("verified", "primary", "missing"),
        (corrupt, "primary"): ("verified", "fallback", "corrupt"),
        (truncated, "fallback"): ("verified", "primary", "size_mismatch"),
    }
    assert world.body("primary", fallback_only) == good and world.body("primary", corrupt) == good
    assert world.body("fallback", truncated) == good
    assert world.body("primary", fine) == world.body("fallback", fine)
    # content type, Cache-Control and user metadata travel with the bytes
    head = world.provider("primary").client.head_object(Bucket=world.provider("primary").bucket, Key=fallback_only)
    assert (head["ContentType"], head["CacheControl"]) == ("audio/wav", "public, max-age=86400")
    assert head["Metadata"] == {"sha256": _sha(good), "original-name": "take 1.wav", "contributor": "c-7"}
    # the findings are resolved by the run, and the next sweep agrees
    resolved = world.conn.execute("SELECT count(*) FROM csl_ops.storage_findings WHERE resolved_replication_id = %s",
                                  (summary.run_id,)).fetchone()[0]
    assert resolved == 4
    assert world.open_findings() == set()
    sweep = world.sweep()
    assert sweep.new == 0 and world.open_findings() == set()
    # replacing a public object tells the edge; restoring one it never served too
    purges = world.conn.execute("SELECT object_key, reason FROM csl_ops.cdn_purge_queue WHERE provider = 'primary' "
                                "AND starts_with(object_key, %s)", (world.prefix,)).fetchall()
    assert sorted(purges) == sorted([(corrupt, "replaced"), (fallback_only, "restored")])
    # a rerun finds nothing to do
    again_plan, again = world.run()
    assert again_plan.totals()["objects"] == 0 and again.verified == 0


def test_two_truths_no_truth_and_no_copy_are_left_for_a_person(world):
    a, b = os.urandom(5_000), os.urandom(5_000)
    two = world.sample(0, "two-truths", a, meta={"fallback": b})  # each copy matches its own sha256
    none = world.sample(1, "no-truth", a, meta={"primary": b, "primary:claims": True,
                                                "fallback": os.urandom(5_000), "fallback:claims": True})
    nowhere = world.sample(2, "nowhere", a, on=())
    wrong_size = world.sample(3, "db-size", a, size=4_000)
    world.sweep()
    before = {k: (world.body("primary", k), world.body("fallback", k)) for k in (two, none, wrong_size)}
    _plan, summary = world.run()
    summary.check()  # a conflict is not a failure of the run: it is a finding that waits
    assert summary.verified == 0 and set(summary.conflict_keys) == {two, none, nowhere, wrong_size}
    assert {k: (world.body("primary", k), world.body("fallback", k)) for k in before} == before
    rows = dict(world.conn.execute(
        "SELECT object_key, detail FROM csl_ops.storage_findings WHERE kind = 'replication_conflict' "
        "AND resolved_at IS NULL AND provider = 'primary' AND starts_with(object_key, %s)", (world.prefix,)))
    assert rows[two]["copies"]["primary"]["sha256"] == _sha(a) and rows[two]["copies"]["fallback"]["sha256"] == _sha(b)
    assert "differ" in rows[two]["reason"]
    assert "hash" in rows[none]["reason"] and rows[none]["copies"]["primary"]["content_sha256"] == _sha(b)
    assert rows[nowhere]["reason"] == "no provider holds a copy"
    assert "database size 4000" in rows[wrong_size]["reason"]
    # a sweep does not close them; fixing the copies by hand and running again does
    world.sweep()
    assert {f for f in world.open_findings() if f[0] == "replication_conflict"} == {
        ("replication_conflict", k, p) for k in (two, none, nowhere, wrong_size) for p in ("primary", "fallback")}
    world.put("fallback", two, a)
    _, after = world.run()
    assert two not in after.conflict_keys
    assert not {f for f in world.open_findings() if f[1] == two}


def test_the_queue_is_drained_and_rows_are_done_only_after_verification(world):
    body = os.urandom(20_000)
    key = world.sample(0, "fell-back", body, on=("fallback",))
    queued = world.conn.execute(
        "INSERT INTO csl_ops.replication_queue (object_key, source_provider, target_provider, reason, sha256, "
        "size_bytes) VALUES (%s, 'fallback', 'primary', 'primary_unavailable', %s, %s) RETURNING id",
        (key, _sha(body), len(body))).fetchone()[0]
    _plan, summary = world.run(mode="queue")
    summary.check()
    assert world.body("primary", key) == body
    status, run = world.conn.execute("SELECT status, resolved_run_id FROM csl_ops.replication_queue WHERE id = %s",
                                     (queued,)).fetchone()
    assert (status, run) == ("done", summary.run_id)


def test_dry_run_and_caps_stop_before_anything_is_copied(world):
    keys = [world.sample(i, f"o{i}", os.urandom(3_000), on=("fallback",)) for i in range(3)]
    world.sweep()
    plan, summary = world.run(dry_run=True)
    assert summary is None and plan.totals()["objects"] == 3 and plan.totals()["bytes"] == 9_000
    assert {(c.key, c.source, c.destination) for c in plan.copies} == {(k, "fallback", "primary") for k in keys}
    assert not any(world.body("primary", k) for k in keys)
    for cap in ({"max_objects": 2}, {"max_bytes": 8_999}):
        with pytest.raises(PlanTooLarge, match="max_objects|max_bytes"):
            world.run(**cap)
        assert not any(world.body("primary", k) for k in keys)
    statuses = [r[0] for r in world.conn.execute("SELECT status FROM csl_ops.replication_runs ORDER BY id")]
    assert statuses == ["dry_run", "refused", "refused"]
    assert world.conn.execute("SELECT count(*) FROM csl_ops.replication_copies").fetchone()[0] == 0


def test_a_destination_down_mid_run_fails_naming_it_and_nothing_unproven_counts(world):
    keys = [world.sample(i, f"o{i}", os.urandom(2_000), on=("primary",)) for i in range(4)]
    world.sweep()
    options = ReplicationOptions(mode="findings", prefix=world.prefix, concurrency=2)
    dead = dataclasses.replace(world.settings.provider("fallback"), endpoint_url="http://127.0.0.1:9")
    with Database(world.settings.require_database()) as db:
        plan = replication.plan_replication(db, [world.provider("primary"), world.provider("fallback")],
                                            run_key="t-down", options=options)
        assert plan.totals()["objects"] == 4
        with pytest.raises(ProviderUnavailable, match="fallback"):
            replication.copy_shard(db, [world.provider("primary"), StorageProvider(dead, max_attempts=1)],
                                   {"run_id": plan.run_id, "shard": 0, "cells": plan.cells}, options=options)
        with db.connection() as conn:
            summary = replication.finish_replication(conn, plan.run_id)
    assert summary.status == "failed" and summary.verified == 0 and summary.failed >= 1
    assert "fallback" in summary.failures[0]["error"]
    with pytest.raises(replication.CopiesFailed):
        summary.check()
    assert world.conn.execute("SELECT count(*) FROM csl_ops.storage_findings WHERE resolved_replication_id = %s",
                              (plan.run_id,)).fetchone()[0] == 0
    # the same run again, the destination back: every object ends verified
    with Database(world.settings.require_database()) as db:
        replication.copy_shard(db, [world.provider("primary"), world.provider("fallback")],
                               {"run_id": plan.run_id, "shard": 0, "cells": plan.cells}, options=options)
        with db.connection() as conn:
            summary = replication.finish_replication(conn, plan.run_id)
    assert summary.status == "done" and summary.verified + summary.skipped == 4
    assert all(world.body("fallback", k) for k in keys)


def _cli_env(world: World, stack_env: dict[str, str]) -> dict[str, str]:
    primary, second = world.settings.storage
    database = world.settings.require_database()
    return {**stack_env, "DATABASE_URL": database.primary_url, "DATABASE_READ_REPLICA_URL": database.replica_url,
            "MINIO_BUCKET": primary.bucket, "MINIO_PUBLISHED_BUCKET": primary.published_bucket,
            "S3_BUCKET": second.bucket, "PYTHONPATH": os.pathsep.join(sys.path)}


# ``python -m csl`` that reports its own peak RSS (VmHWM) on exit. Not wait4's ru_maxrss: a child
# forked from pytest starts with pytest's resident size as its maximum (measured: 154 MB before
# it had imported anything), while VmHWM belongs to the process's own address space after exec.
PEAK_RSS = """
import atexit, runpy, sys
def report():
    with open('/proc/self/status') as status:
        peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
    print('peak-rss-kib', peak, file=sys.stderr)
atexit.register(report)
sys.argv = ['csl', *sys.argv[1:]]
runpy.run_module('csl', run_name='__main__', alter_sys=True)
"""


def _replicate_cli(world: World, stack_env, *args: str, peak: bool = False) -> subprocess.Popen:
    launcher = ["-c", PEAK_RSS] if peak else ["-m", "csl"]
    return subprocess.Popen([sys.executable, *launcher, "storage", "replicate", "--prefix", world.prefix, *args],
                            env=_cli_env(world, stack_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if peak else subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.timeout(600)
def _kill_once_verified(world, first, run_key: str, at_least: int = 5) -> int:
    """SIGKILL the CLI run once ``at_least`` of its copies are verified; returns how many were."""
    deadline = time.monotonic() + 120
    verified = 0
    while time.monotonic() < deadline and first.poll() is None:
        verified = world.conn.execute(
            "SELECT count(*) FROM csl_ops.replication_copies c JOIN csl_ops.replication_runs r ON r.id = c.run_id "
            "WHERE r.run_key = %s AND c.status = 'verified'", (run_key,)).fetchone()[0]
        if verified >= at_least:
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(30)
    assert first.returncode == -signal.SIGKILL, first.stdout.read()
    return verified


def test_killed_mid_run_then_rerun_every_object_ends_verified_and_none_is_copied_twice(world, stack_env):
    bodies = {world.sample(i, f"k{i:03}", os.urandom(256 * 1024), on=("primary",)): None for i in range(40)}
    world.sweep()
    run_key = f"cli-kill-{world.tag}"
    first = _replicate_cli(world, stack_env, "--mode", "findings", "--run-key", run_key, "--concurrency", "2")
    _kill_once_verified(world, first, run_key)
    before = {k: (status, attempts) for (k, _), (status, _, _, _, _, attempts) in world.copies(
        world.conn.execute("SELECT id FROM csl_ops.replication_runs WHERE run_key = %s", (run_key,)).fetchone()[0]
    ).items()}
    done_first = {k for k, (status, _) in before.items() if status == "verified"}
    assert 5 <= len(done_first) < len(bodies)

    second = _replicate_cli(world, stack_env, "--mode", "findings", "--run-key", run_key, "--json")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    run_id = world.conn.execute("SELECT id FROM csl_ops.replication_runs WHERE run_key = %s", (run_key,)).fetchone()[0]
    after = world.copies(run_id)
    assert set(after) == {(k, "fallback") for k in bodies}
    assert all(v[0] in ("verified", "skipped") for v in after.values()), after
    for key in done_first:  # verified before the kill: never touched again
        assert after[(key, "fallback")][0] == "verified" and after[(key, "fallback")][5] == 1
    for key in bodies:
        assert world.provider("fallback").digest(key)[0] == world.provider("primary").digest(key)[0]
    assert json.loads(out)["summary"]["status"] == "done"
    assert world.open_findings() == set()


@pytest.mark.timeout(900)
def test_a_200_mib_object_is_streamed_in_parts_with_bounded_memory(world, stack_env, tmp_path):
    big = tmp_path / "big.wav"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for _ in range(200):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    key = world.key("big")
    primary = world.provider("primary")
    primary.client.upload_file(str(big), primary.bucket, key, ExtraArgs={
        "ContentType": "audio/wav", "Metadata": {"sha256": digest.hexdigest(), "original-name": "big.wav"}})
    big.unlink()
    world.conn.execute("UPDATE audio_samples SET file_url = %s, file_size = %s WHERE id = %s",
                       (key, 200 << 20, world.rows[0]))
    world.sweep()
    child = _replicate_cli(world, stack_env, "--mode", "findings", "--concurrency", "1", "--json", peak=True)
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, out + err
    peak_mb = int(err.split("peak-rss-kib")[-1].split()[0]) / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    assert 30 < peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    summary = json.loads(out)["summary"]
    assert (summary["verified"], summary["bytes"], summary["by_method"]) == (1, 200 << 20, {"multipart": 1})
    fallback = world.provider("fallback")
    assert fallback.digest(key) == (digest.hexdigest(), digest.hexdigest())


def test_multipart_copies_keep_headers_metadata_and_tags_and_one_endpoint_copies_server_side(world, settings):
    body = os.urandom(12 << 20)
    key = world.sample(0, "tagged", body, on=("primary",))
    primary = world.provider("primary")
    primary.client.put_object_tagging(Bucket=primary.bucket, Key=key,
                                      Tagging={"TagSet": [{"Key": "licence", "Value": "cc-by"}]})
    small = world.sample(1, "small", os.urandom(4_000), on=("primary",))
    world.sweep()
    _, summary = world.run(multipart_threshold_mb=5)
    summary.check()
    assert summary.by_method == {"multipart": 1, "put": 1}
    # SeaweedFS verifies upload checksums: its stored SHA-256 (single PUT) and composite (parts) are evidence
    assert summary.by_verification == {"composite": 1, "checksum": 1}
    fallback = world.provider("fallback")
    head = fallback.client.head_object(Bucket=fallback.bucket, Key=key)
    assert (head["ContentType"], head["CacheControl"], head["ContentLength"]) == (
        "audio/wav", "public, max-age=86400", len(body))
    assert head["Metadata"] == {"sha256": _sha(body), "original-name": "take 1.wav", "contributor": "c-7"}
    tags = fallback.client.get_object_tagging(Bucket=fallback.bucket, Key=key)["TagSet"]
    assert tags == [{"Key": "licence", "Value": "cc-by"}]
    assert fallback.digest(small)[0] == primary.digest(small)[0]

    # a second bucket on the primary's own endpoint: CopyObject, then read back
    same = dataclasses.replace(world.settings.provider("primary"), name="fallback", bucket=f"rep-{world.tag}-s",
                               public_bucket=False, published_bucket=None)
    StorageProvider(same).ensure_bucket()
    local = dataclasses.replace(world.settings, storage=(world.settings.provider("primary"), same))
    try:
        world.sweep_with(local)
        _, summary = replicate(local, run_key=f"t-same-{world.tag}",
                               options=ReplicationOptions(mode="findings", prefix=world.prefix))
        summary.check()
        assert summary.by_method == {"server_copy": 2} and summary.by_verification == {"reread": 2}
        assert StorageProvider(same).digest(key)[0] == _sha(body)
    finally:
        _empty(StorageProvider(same))


def test_the_inventory_is_read_on_the_replica_and_on_the_primary_when_it_is_down(world, service_down):
    world.sample(0, "one", os.urandom(1_000), on=("fallback",))
    world.sweep()
    plan, _ = world.run(dry_run=True)
    assert plan.inventory_from == "replica"
    service_down("pg-replica")
    plan, summary = world.run()
    assert plan.inventory_from == "primary" and summary.inventory_from == "primary"
    assert summary.verified == 1
    recorded = world.conn.execute("SELECT inventory_from FROM csl_ops.replication_runs ORDER BY id").fetchall()
    assert recorded == [("replica",), ("primary",)]


def test_a_mixed_order_pair_is_diffed_and_replicated_with_no_false_finding(world, moto_settings):
    """SeaweedFS (path order) and moto (byte order, like AWS S3) as the run's providers: keys
    that sort differently in the two orders, a few copies missing on each side."""
    mixed = dataclasses.replace(world.settings, storage=(world.settings.provider("primary"), moto_settings))
    aws = StorageProvider(moto_settings)
    names = ["a/b", "a-c", "a.d", "a0", "ab", "a~", "aé", "a/b/c", "x/y/z", "x-y", "A"]
    bodies = {}
    for i, name in enumerate(names):
        body = os.urandom(2_000 + i)
        key = world.key(name).removesuffix(".wav")
        on = ("primary",) if i % 4 == 1 else ("aws",) if i % 4 == 2 else ("primary", "aws")
        for where in on:
            p = world.provider("primary") if where == "primary" else aws
            p.client.put_object(Bucket=p.bucket, Key=key, Body=body, ContentType="audio/wav",
                                Metadata={"sha256": _sha(body)})
        world.conn.execute("UPDATE audio_samples SET file_url = %s, file_size = %s WHERE id = %s",
                           (key, len(body), world.rows[i]))
        bodies[key] = (body, on)
    # the diff merges in path order: moto's byte-order listing is brought into it
    plan, summary = replicate(mixed, run_key=f"t-mixed-dry-{world.tag}",
                              options=ReplicationOptions(mode="diff", prefix=world.prefix, dry_run=True))
    expected = {(k, "aws" if on == ("primary",) else "primary") for k, (_, on) in bodies.items() if len(on) == 1}
    assert {(c.key, c.destination) for c in plan.copies} == expected and not plan.conflicts
    _, summary = replicate(mixed, run_key=f"t-mixed-{world.tag}",
                           options=ReplicationOptions(mode="diff", prefix=world.prefix))
    summary.check()
    assert summary.verified == len(expected) and summary.conflicts == 0
    # moto does not verify upload checksums: its copies are read back; SeaweedFS's checksum is evidence
    assert summary.by_verification == {"reread": sum(1 for _, d in expected if d == "aws"),
                                       "checksum": sum(1 for _, d in expected if d == "primary")}
    for key, (body, _) in bodies.items():
        assert world.provider("primary").get(key) == body and aws.get(key) == body
    # the rerun's quick look merges moto's listing, brought into path order, and finds nothing
    plan, summary = replicate(mixed, run_key=f"t-mixed-noop-{world.tag}",
                              options=ReplicationOptions(mode="diff", prefix=world.prefix))
    assert plan.quick_look and (summary.status, summary.planned) == ("done", 0)
    for key_order in ("path", "byte"):  # the next sweep agrees, whichever order it merges in
        after = integrity.run_sweep(mixed, run_key=f"sweep-mixed-{key_order}-{world.tag}", shards=1, workers=1,
                                    options=integrity.SweepOptions(prefix=world.prefix, key_order=key_order,
                                                                   deep_rate=1.0))
        assert not after.failures and after.finding_counts == {}


def test_a_source_whose_bytes_betray_its_metadata_is_never_copied(world):
    """Nothing suspected it (no checksum finding, one copy): the copy itself finds the bytes do
    not hash to the metadata, writes nothing, and leaves a conflict for a person."""
    good = os.urandom(50_000)
    bad = bytes([good[0] ^ 0xFF]) + good[1:]
    key = world.sample(0, "rotten", good, on=("fallback",), meta={"fallback": bad, "fallback:claims": True})
    big = world.sample(1, "rotten-big", b"", on=())  # row only; object below
    body = os.urandom(11 << 20)
    world.put("fallback", big, body[:-1] + bytes([body[-1] ^ 1]), sha256=_sha(body))
    world.conn.execute("UPDATE audio_samples SET file_size = %s WHERE id = %s", (len(body), world.rows[1]))
    for k, size in ((key, len(good)), (big, len(body))):
        world.conn.execute(
            "INSERT INTO csl_ops.replication_queue (object_key, source_provider, target_provider, reason, sha256, "
            "size_bytes) VALUES (%s, 'fallback', 'primary', 'primary_unavailable', %s, %s)", (k, "0" * 64, size))
    plan, summary = world.run(mode="queue", multipart_threshold_mb=5)
    assert {c.key for c in plan.copies} == {key, big}  # the HEADs looked fine
    assert summary.conflicts == 2 and summary.verified == 0
    assert world.body("primary", key) is None and world.body("primary", big) is None  # no PUT, the upload aborted
    primary = world.provider("primary")
    assert primary.client.list_multipart_uploads(Bucket=primary.bucket).get("Uploads", []) == []
    assert world.conn.execute("SELECT count(*) FROM csl_ops.replication_queue WHERE status = 'pending'").fetchone() == (2,)


def test_the_destination_is_proven_not_assumed(world):
    from csl.storage.transfer import DestinationNotVerified, verify_stored

    body = os.urandom(10_000)
    fallback = world.provider("fallback")
    key = world.key("proof")
    fallback.client.put_object(Bucket=fallback.bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256",
                               Metadata={"sha256": _sha(body)})
    assert verify_stored(fallback, key, sha256=_sha(body), size=len(body), method="put") == "checksum"
    assert verify_stored(fallback, key, sha256=_sha(body), size=len(body), method="existing") == "reread"
    with pytest.raises(DestinationNotVerified, match="metadata"):
        verify_stored(fallback, key, sha256="0" * 64, size=len(body), method="put")
    with pytest.raises(DestinationNotVerified, match="bytes"):
        verify_stored(fallback, key, sha256=_sha(body), size=len(body) + 1, method="put")
    # bytes that differ from what the metadata claims, with no stored SHA-256 to go by: read back, refused
    rotten = bytes([body[0] ^ 1]) + body[1:]
    fallback.client.put_object(Bucket=fallback.bucket, Key=key, Body=rotten, Metadata={"sha256": _sha(body)})
    with pytest.raises(DestinationNotVerified, match="hash"):
        verify_stored(fallback, key, sha256=_sha(body), size=len(body), method="put")
    with pytest.raises(DestinationNotVerified, match="not there"):
        verify_stored(fallback, world.key("absent"), sha256=_sha(body), size=1, method="put")


def test_a_run_limited_to_one_destination_resolves_only_the_findings_it_proved(world):
    to_primary = world.sample(0, "to-primary", os.urandom(3_000), on=("fallback",))
    to_fallback = world.sample(1, "to-fallback", os.urandom(3_000), on=("primary",))
    world.sweep()
    _, summary = world.run(destination="primary")
    summary.check()
    assert summary.verified == 1 and world.body("primary", to_primary) is not None
    assert world.body("fallback", to_fallback) is None
    assert world.open_findings() == {("missing", to_fallback, "fallback")}
    # the only right copy is on the primary: a run that may copy only from the fallback cannot give it
    plan, summary = world.run(source="fallback")
    assert plan.blocked == [(to_fallback, "fallback", ("the right copy is on primary, not on the allowed source "
                                                      "fallback"))]
    assert summary.verified == summary.failed == summary.conflicts == 0
    assert world.open_findings() == {("missing", to_fallback, "fallback")}


def test_a_diff_run_plans_from_the_listing_and_proves_the_source_while_copying(world):
    """Keys the fresh sweep found on one provider only are planned without HEADs (their
    sha256 comes with the source's bytes); anything else is examined as before. A source with
    no sha256 metadata, or whose bytes betray it, is never copied."""
    plain = world.sample(0, "plain", os.urandom(30_000), on=("primary",))
    back = world.sample(1, "back", os.urandom(20_000), on=("fallback",))
    wrong_size = world.sample(2, "wrong-size", os.urandom(10_000), on=("primary",), size=9_999)
    unclaimed = world.key("unclaimed")
    primary = world.provider("primary")
    primary.client.put_object(Bucket=primary.bucket, Key=unclaimed, Body=b"u" * 4_000)  # no sha256 metadata
    world.conn.execute("UPDATE audio_samples SET file_url = %s, file_size = 4000 WHERE id = %s",
                       (unclaimed, world.rows[3]))
    good = os.urandom(8_000)
    betrayed = world.sample(4, "betrayed", good, on=("primary",),
                            meta={"primary": bytes([good[0] ^ 1]) + good[1:], "primary:claims": True})
    plan, _ = world.run(mode="diff", dry_run=True)
    planned = {c.key: c for c in plan.copies}
    assert set(planned) == {plain, back, unclaimed, betrayed}  # the wrong size is a conflict, as before
    assert all(planned[k].sha256 is None and planned[k].reason == "missing" for k in (plain, unclaimed, betrayed))
    assert (planned[back].destination, planned[back].reason) == ("primary", "fallback_only")  # examined
    assert [d.key for d in plan.conflicts] == [wrong_size]

    _, summary = world.run(mode="diff")
    assert (summary.verified, summary.conflicts) == (2, 3)
    assert set(summary.conflict_keys) == {wrong_size, unclaimed, betrayed}
    assert world.body("fallback", unclaimed) is None and world.body("fallback", betrayed) is None
    copies = world.copies(summary.run_id)
    assert copies[(plain, "fallback")][:5] == ("verified", "primary", "missing", "put", "checksum")
    recorded = world.conn.execute("SELECT sha256 FROM csl_ops.replication_copies WHERE run_id = %s "
                                  "AND object_key = %s", (summary.run_id, plain)).fetchone()[0]
    assert recorded == world.provider("primary").digest(plain)[0]  # filled in from the proven source


@pytest.mark.timeout(600)
def test_a_diff_run_killed_mid_copy_keeps_what_it_settled_and_its_rerun_finishes(world, stack_env):
    """Proven rows are written in batches: a SIGKILL loses at most the rows not yet written,
    whose copies the rerun's fresh sweep finds in place (right, by the PUT that proved them)
    or copies again. Nothing settled before the kill is touched again."""
    keys = [world.sample(i, f"d{i:03}", os.urandom(128 * 1024), on=("primary",)) for i in range(40)]
    run_key = f"cli-diff-kill-{world.tag}"
    first = _replicate_cli(world, stack_env, "--mode", "diff", "--run-key", run_key, "--concurrency", "2")
    _kill_once_verified(world, first, run_key)
    run_id = world.conn.execute("SELECT id FROM csl_ops.replication_runs WHERE run_key = %s", (run_key,)).fetchone()[0]
    before = {k: v for (k, _), v in world.copies(run_id).items()}
    settled = {k for k, v in before.items() if v[0] == "verified"}
    assert 5 <= len(settled) < len(keys)
    assert all(before[k][4:] == ("checksum", 1) for k in settled)  # verified by the PUT, one attempt
    assert {v[0] for k, v in before.items() if k not in settled} <= {"planned"}  # never half-written

    second = _replicate_cli(world, stack_env, "--mode", "diff", "--run-key", run_key, "--json")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert json.loads(out)["summary"]["status"] == "done"
    after = {k: v for (k, _), v in world.copies(run_id).items()}
    assert all(v[0] in ("verified", "skipped") for v in after.values()), after
    for key in settled:
        assert after[key] == before[key]
    for key in keys:
        assert world.provider("fallback").digest(key)[0] == world.provider("primary").digest(key)[0]
    assert world.open_findings() == set()


def test_a_large_plan_refreshes_the_statistics_its_settling_is_planned_from(world, monkeypatch):
    """From ``ANALYZE_AT`` plan rows the copy's tables are analyzed before copying (findings and
    plan rows written seconds ago would be planned as the empty tables they were); the run is
    otherwise the same: copied, proven, its findings resolved."""
    monkeypatch.setattr(replication, "ANALYZE_AT", 1)
    keys = {world.sample(i, f"stats-{i}", os.urandom(5_000), on=("primary",)) for i in range(2)}
    before = _analyze_count(world.settings)
    _, summary = world.run(mode="diff")
    assert (summary.verified, summary.failed) == (2, 0)
    assert not {f for f in world.open_findings() if f[1] in keys}
    assert _analyze_count(world.settings) > before


def _analyze_count(settings: Settings) -> int:
    with psycopg.connect(settings.require_database().primary_url, autocommit=True) as conn:
        return conn.execute("SELECT coalesce(sum(analyze_count), 0) FROM pg_stat_user_tables "
                            "WHERE schemaname = 'csl_ops' AND relname = 'replication_copies'").fetchone()[0]


def _sweeps(world: World) -> int:
    return world.conn.execute("SELECT count(*) FROM csl_ops.storage_sweeps").fetchone()[0]


def test_a_diff_with_nothing_owed_takes_the_quick_look_and_records_no_sweep(world, stack_env):
    """A diff rerun where every provider already holds every referenced object: the sweep's
    merge finds nothing, so no sweep, no plan rows and no copy are recorded; the run is done
    and says where its inventory was read. A prefix without its final "/" discovers its cells
    first and comes to the same answer."""
    keys = [world.sample(i, f"q{i}", os.urandom(3_000 + i)) for i in range(4)]
    missing = world.sample(4, "q-missing", os.urandom(5_000), on=("primary",))
    plan, summary = world.run(mode="diff")
    summary.check()
    assert not plan.quick_look and plan.sweep_id is not None and summary.verified == 1  # the full diff
    for prefix in (world.prefix, world.prefix.rstrip("/")):
        sweeps = _sweeps(world)
        plan, summary = world.run(mode="diff", prefix=prefix)
        summary.check()
        assert plan.quick_look and plan.sweep_id is None and not plan.copies and not plan.conflicts
        assert (summary.status, summary.planned, summary.verified) == ("done", 0, 0)
        assert _sweeps(world) == sweeps
        recorded = world.conn.execute("SELECT status, inventory_from, sweep_id, summary -> 'quick_look' "
                                      "FROM csl_ops.replication_runs WHERE id = %s", (summary.run_id,)).fetchone()
        assert recorded == ("done", "replica", None, True)
    assert all(world.body("fallback", k) == world.body("primary", k) for k in [*keys, missing])
    plan, summary = world.run(mode="diff", prefix=world.prefix + "nothing-here/")  # an empty folder: nothing owed
    assert plan.quick_look and (summary.status, summary.planned) == ("done", 0)
    sweeps = _sweeps(world)
    cli = _replicate_cli(world, stack_env, "--mode", "diff")
    out, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0 and out.startswith(f"nothing owed under {world.prefix!r}"), out
    assert _sweeps(world) == sweeps


def _defect(world: World, kind: str, key: str, body: bytes) -> None:
    if kind == "deleted":
        world.provider("fallback").delete(key)
    elif kind == "rotten":  # same size, the metadata still claims the right hash: only the ETag differs
        world.put("fallback", key, bytes([body[0] ^ 1]) + body[1:], sha256=_sha(body))
    elif kind == "resized":  # the database says another size than both copies have
        world.conn.execute("UPDATE audio_samples SET file_size = file_size + 1 WHERE file_url = %s", (key,))
    elif kind == "stale finding":  # nothing is wrong any more, but a finding is open: a sweep must close it
        world.provider("fallback").delete(key)
        world.sweep()
        world.put("fallback", key, body)
        assert world.open_findings() == {("missing", key, "fallback")}


@pytest.mark.parametrize("kind", ["deleted", "rotten", "resized", "stale finding"])
def test_the_quick_look_hides_nothing_a_sweep_would_find(world, kind):
    """After a clean no-op, one defect: the next diff is the full one and does what it always did."""
    body = os.urandom(6_000)
    key = world.sample(0, "victim", body)
    world.sample(1, "bystander", os.urandom(6_000))
    plan, summary = world.run(mode="diff")
    assert plan.quick_look and summary.status == "done"
    _defect(world, kind, key, body)
    sweeps = _sweeps(world)  # a stale finding's own sweep included
    plan, summary = world.run(mode="diff")
    assert not plan.quick_look and plan.sweep_id is not None and _sweeps(world) == sweeps + 1
    if kind == "resized":  # no copy has the database's size: left for a person, nothing overwritten
        assert summary.conflict_keys == [key] and summary.verified == 0
    elif kind == "stale finding":
        assert summary.verified == 0 and world.open_findings() == set()
    else:
        summary.check()
        assert summary.verified == 1 and world.body("fallback", key) == body
        assert world.open_findings() == set()


def test_a_rerun_that_left_a_copy_unproven_takes_the_full_diff(world):
    """A crash between a copy's write and its proof leaves a ``copied`` row while the listings
    already agree: the rerun of that run must not take the quick look (its finish would count
    the row as never finished), but re-plan from a full diff, which drops the row its key no
    longer needs. The run keeps its sweep."""
    key = world.sample(0, "unproven", os.urandom(4_000), on=("primary",))
    run_key = f"t-unproven-{world.tag}"
    options = ReplicationOptions(mode="diff", prefix=world.prefix)
    plan, summary = replicate(world.settings, run_key=run_key, options=options)
    summary.check()
    assert not plan.quick_look and world.body("fallback", key) is not None
    world.conn.execute("UPDATE csl_ops.replication_copies SET status = 'copied' WHERE run_id = %s", (summary.run_id,))
    plan, summary = replicate(world.settings, run_key=run_key, options=options)
    summary.check()
    assert not plan.quick_look and plan.sweep_id is not None and summary.status == "done"
    assert world.copies(summary.run_id) == {}
    # once nothing is left unfinished, the same run's rerun looks quickly and keeps the sweep it came from
    plan, summary = replicate(world.settings, run_key=run_key, options=options)
    assert plan.quick_look and summary.status == "done"
    assert world.conn.execute("SELECT sweep_id FROM csl_ops.replication_runs WHERE id = %s",
                              (summary.run_id,)).fetchone()[0] is not None


def test_a_provider_down_during_the_quick_look_fails_the_run_as_the_full_diff_does(world, service_down):
    world.sample(0, "reachable", os.urandom(2_000))
    service_down("s3-fallback")
    with pytest.raises(StorageError, match="cannot list provider 'fallback'") as failed:  # the full diff's words
        world.run(mode="diff")
    assert failed.value.provider == "fallback"
