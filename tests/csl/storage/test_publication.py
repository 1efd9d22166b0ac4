"""csl.publication against the real SeaweedFS and PostgreSQL, and the real Varnish edge: only
approved samples can be read by anyone (issue 12, item 11)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from csl.cdn import VarnishEdge
from csl.db import Database
from csl.storage import StorageProvider, publication


@dataclasses.dataclass
class World:
    provider: StorageProvider  # a bucket of its own, and its published bucket
    conn: psycopg.Connection  # a fresh platform database: every sample unapproved to begin with
    rows: list[str]  # audio_samples ids free for the test to point at its keys
    tag: str

    @property
    def published(self) -> StorageProvider:
        return self.provider.published()

    def sample(self, n: int, body: bytes, *, approved: bool = True, key: str | None = None,
               file_url: str | None = None) -> str:
        """Row ``n`` names ``key`` (an object holding ``body``), approved or not; returns the key."""
        key = key or f"samples/{self.tag}/{n}.wav"
        if body is not None:
            self.provider.put(key, body, content_type="audio/wav")
        self.conn.execute("UPDATE audio_samples SET file_url = %s, approved = %s WHERE id = %s",
                          (file_url or key, approved, self.rows[n]))
        return key

    def approve(self, n: int, approved: bool) -> None:
        self.conn.execute("UPDATE audio_samples SET approved = %s WHERE id = %s", (approved, self.rows[n]))

    def run(self, **kwargs):
        kwargs.setdefault("dry_run", False)
        return publication.run_publication(self.conn, self.provider, run_key=f"t-{uuid.uuid4().hex[:6]}", **kwargs)

    def copies(self) -> dict[str, bytes]:
        return {o.key: self.published.get(o.key) for o in self.published.iter_objects("")}

    def events(self) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT object_key, action FROM csl_ops.publication_events ORDER BY id").fetchall()


def _empty(provider: StorageProvider) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(provider.delete, [o.key for o in provider.iter_objects("")]))
    provider.client.delete_bucket(Bucket=provider.bucket)


@pytest.fixture
def world(settings, platform_db):
    tag = uuid.uuid4().hex[:10]
    own = dataclasses.replace(settings.provider("primary"), bucket=f"pub-{tag}", published_bucket=f"pub-{tag}-out")
    provider = StorageProvider(own, max_attempts=1)
    assert provider.ensure_buckets() == [f"pub-{tag}", f"pub-{tag}-out"]
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("UPDATE audio_samples SET approved = false")
        rows = [r[0] for r in conn.execute("SELECT id::text FROM audio_samples ORDER BY id LIMIT 12")]
        yield World(provider, conn, rows, tag)
    _empty(provider.published())
    _empty(provider)


def anonymous_status(provider: StorageProvider, key: str) -> int:
    return httpx.get(f"{provider.settings.endpoint_url}/{provider.bucket}/{key}").status_code


def test_only_approved_samples_are_published_verified_and_a_rerun_changes_nothing(world):
    approved = world.sample(0, b"RIFF approved")
    pending = world.sample(1, b"RIFF waiting for review", approved=False)
    by_url = world.sample(2, b"RIFF stored as a URL",
                          file_url=f"http://127.0.0.1:9000/{world.provider.bucket}/samples/{world.tag}/2.wav?x=1")
    missing = world.sample(3, None)  # approved, but no object
    outside = world.sample(4, b"RIFF elsewhere", key=f"uploads/{world.tag}/4.wav")

    result = world.run()
    assert sorted(result.publish) == [(approved, "new"), (by_url, "new")]
    assert (result.missing, result.unpublishable, result.copy_refused) == ([missing], [outside], [])
    assert world.copies() == {approved: b"RIFF approved", by_url: b"RIFF stored as a URL"}
    # anyone may read the copies of approved samples, nothing in the bucket of record
    assert {k: anonymous_status(world.published, k) for k in (approved, by_url)} == {approved: 200, by_url: 200}
    assert {anonymous_status(world.provider, k) for k in (approved, pending, by_url, outside)} == {403}
    assert anonymous_status(world.published, pending) != 200
    recorded = dict(world.conn.execute("SELECT object_key, sha256 FROM csl_ops.published_objects").fetchall())
    assert recorded == {approved: hashlib.sha256(b"RIFF approved").hexdigest(),
                        by_url: hashlib.sha256(b"RIFF stored as a URL").hexdigest()}

    events = world.events()
    again = world.run()
    assert (again.publish, again.withdraw, again.unfinished) == ([], [], [])
    assert world.events() == events


def test_unapproving_withdraws_the_copy_and_keeps_the_original(world):
    keys = [world.sample(n, f"RIFF {n}".encode()) for n in range(10)]
    world.run()
    world.approve(0, False)
    result = world.run()
    assert result.withdraw == [keys[0]]
    assert keys[0] not in world.copies() and len(world.copies()) == 9
    assert world.provider.get(keys[0]) == b"RIFF 0"  # the original never moves
    assert anonymous_status(world.published, keys[0]) != 200
    assert world.events()[-1] == (keys[0], "withdrawn")
    assert world.conn.execute("SELECT count(*) FROM csl_ops.published_objects WHERE object_key = %s",
                              (keys[0],)).fetchone()[0] == 0


def test_a_replaced_original_is_published_again(world):
    key = world.sample(0, b"RIFF first take")
    world.run()
    world.provider.put(key, b"RIFF second take, longer")
    result = world.run()
    assert result.publish == [(key, "changed")]
    assert world.copies() == {key: b"RIFF second take, longer"}
    assert world.events()[-1] == (key, "republished")


def test_a_copy_that_does_not_match_its_original_is_never_left_public(world):
    key = f"samples/{world.tag}/bad.wav"
    world.provider.put(key, b"RIFF rotten", metadata={"sha256": hashlib.sha256(b"RIFF fresh").hexdigest()})
    world.sample(0, None, key=key)
    result = world.run()
    assert [(r["key"], r["problem"]) for r in result.copy_refused] == [(key, "corrupt")]
    assert world.copies() == {}
    assert world.conn.execute("SELECT count(*) FROM csl_ops.published_objects").fetchone()[0] == 0
    assert world.events() == [(key, "copy_refused")]
    assert result.summary()["corrupt"] == 1
    again = world.run()  # not copied again while the original is the same corrupt object
    assert (again.publish, again.known_corrupt, world.events()) == ([], [key], [(key, "copy_refused")])
    assert again.summary()["corrupt"] == 1
    world.provider.put(key, b"RIFF fresh")  # restored (from another provider): published on the next run
    assert world.run().publish == [(key, "new")] and world.copies() == {key: b"RIFF fresh"}


def test_copies_carry_the_cache_headers_of_their_zone_and_keep_the_originals_metadata(world):
    # issue 15: originals stored before cache headers existed still publish with them
    key = world.sample(0, b"RIFF sound")
    image = world.sample(1, b"\x89PNG cover", key=f"samples/{world.tag}/cover.png")
    world.provider.client.copy_object(Bucket=world.provider.bucket, Key=image, MetadataDirective="REPLACE",
                                      CopySource={"Bucket": world.provider.bucket, "Key": image},
                                      ContentType="image/png", Metadata={"sha256": world.provider.head(image)[
                                          "metadata"]["sha256"]})
    world.run()
    copy = world.published.client.head_object(Bucket=world.published.bucket, Key=key)
    assert copy["CacheControl"] == "public, max-age=86400, s-maxage=604800" and copy["ContentType"] == "audio/wav"
    assert copy["Metadata"]["xkey"] == "zone:audio" and len(copy["Metadata"]["sha256"]) == 64
    cover = world.published.client.head_object(Bucket=world.published.bucket, Key=image)
    assert cover["CacheControl"] == "public, max-age=86400, s-maxage=2592000"
    assert cover["Metadata"]["xkey"] == "zone:images" and cover["ContentType"] == "image/png"


def test_a_copy_garbled_on_the_way_is_deleted_and_reported_as_a_failed_copy(world, monkeypatch):
    key = world.sample(0, b"RIFF sound original")
    monkeypatch.setattr(StorageProvider, "copy_from", lambda self, source, k, **_: self.put(k, b"RIFF garbled"))
    result = world.run()
    assert [(r["key"], r["problem"]) for r in result.copy_refused] == [(key, "copy_failed")]
    assert world.copies() == {} and result.summary()["copy_failed"] == 1
    monkeypatch.undo()
    assert world.run().publish == [(key, "new")] and world.copies() == {key: b"RIFF sound original"}


def test_withdrawing_more_than_the_caps_allow_is_refused_before_anything_changes(world):
    keys = [world.sample(n, f"RIFF {n}".encode()) for n in range(10)]
    world.run()
    world.conn.execute("UPDATE audio_samples SET approved = false")  # e.g. a database restored without approvals
    with pytest.raises(publication.WithdrawalCapExceeded, match=r"10 of the 10 published samples .* max_share=10%"):
        world.run()
    assert sorted(world.copies()) == sorted(keys)
    dry = world.run(dry_run=True)
    assert dry.withdraw == sorted(keys) and "max_share" in dry.refused and len(world.copies()) == 10
    world.conn.execute("UPDATE audio_samples SET approved = true WHERE id = ANY(%s::uuid[])", (world.rows[:10],))
    for n in (1, 2):
        world.approve(n, False)
    with pytest.raises(publication.WithdrawalCapExceeded, match="2 published samples .* max_withdrawals=1"):
        world.run(max_withdrawals=1, max_share=1)
    assert len(world.copies()) == 10
    assert world.run(max_withdrawals=2, max_share=1).withdraw == sorted(keys[1:3])
    with pytest.raises(publication.PublicationError, match="max_share"):
        world.run(max_share=0)


def test_one_run_per_provider_at_a_time(world, platform_db):
    key = world.sample(0, b"RIFF 0")
    with psycopg.connect(platform_db, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (publication._LOCK_CLASS, world.provider.name))
        with pytest.raises(publication.PublicationBusy, match="holds the lock"):
            world.run()
        assert world.run(dry_run=True).publish == [(key, "new")]  # a dry run changes nothing: no lock needed
        assert world.copies() == {}
        # released here, not by closing: a closed session's backend may still hold it for a moment
        other.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (publication._LOCK_CLASS, world.provider.name))
    assert world.run().publish == [(key, "new")]


def test_a_run_that_died_half_way_is_finished_by_the_next(world):
    keys = [world.sample(n, f"RIFF {n}".encode()) for n in range(10)]
    world.run()
    # died after copying (no record): the copy is made again and recorded
    world.conn.execute("DELETE FROM csl_ops.published_objects WHERE object_key = %s", (keys[1],))
    # died after deleting a withdrawn copy (record and purge left)
    world.approve(0, False)
    world.published.delete(keys[0])
    result = world.run()
    assert (result.publish, result.unfinished, result.withdraw) == ([(keys[1], "unrecorded")], [keys[0]], [])
    published = {r[0] for r in world.conn.execute("SELECT object_key FROM csl_ops.published_objects")}
    assert published == set(keys[1:]) == set(world.copies())
    assert world.conn.execute("SELECT count(*) FROM csl_ops.publication_events WHERE edge_purged = false "
                              "AND action = 'withdrawn' AND object_key = %s", (keys[0],)).fetchone()[0] == 1  # no edge


def test_purges_the_edge_refuses_stay_owed_and_are_sent_by_a_later_run(world, settings):
    sent: list[str] = []

    def varnish(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["xkey-purge"])
        return httpx.Response(200, text=f"Purged {len(sent[-1].split())}\n")

    accepting = VarnishEdge(settings.edge, transport=httpx.MockTransport(varnish))
    refusing = VarnishEdge(settings.edge, transport=httpx.MockTransport(lambda request: httpx.Response(503, text="busy")))
    keys = [world.sample(n, f"RIFF {n}".encode()) for n in range(10)]
    first = world.run(edge=accepting)  # new copies are purged too: the edge may hold the 404 it gave before
    assert first.purge == {"owed": 0, "sent": 10, "dropped": 10}
    sent.clear()
    world.approve(0, False)
    result = world.run(edge=refusing)
    assert result.withdraw == [keys[0]] and result.purge["owed"] == 1 and "HTTP 503" in result.purge["error"]
    assert world.run(edge=accepting).purge == {"owed": 0, "sent": 1, "dropped": 1}
    assert sent == [f"obj:/{world.published.bucket}/{keys[0]}"]
    assert world.run(edge=accepting).purge["sent"] == 0


def test_purges_are_batched_under_the_edge_header_limit(settings):
    headers: list[str] = []

    def varnish(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers["xkey-purge"])
        return httpx.Response(200, text=f"Purged {len(headers[-1].split())}\n")

    keys = [f"samples/{n:04d}/{uuid.uuid4()}.wav" for n in range(300)]
    edge = VarnishEdge(settings.edge, transport=httpx.MockTransport(varnish))
    assert edge.purge_objects("bucket", keys, header_limit=2000) == 300
    assert len(headers) > 1 and max(len(h) for h in headers) <= 2000
    assert [t for h in headers for t in h.split()] == [f"obj:/bucket/{k}" for k in keys]


# -- the real edge, the real published bucket, the shared platform database ------------------------
def test_the_edge_serves_approved_samples_only_and_forgets_one_when_it_is_unapproved(platform, settings, stack_env):
    primary = StorageProvider(settings.provider("primary"))
    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull}
    cli = lambda *a: subprocess.run([sys.executable, "-m", "csl", "storage", "publish", *a], capture_output=True,
                                    text=True, env=env, timeout=300, check=False)
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        rows = conn.execute("SELECT id, file_url, approved FROM audio_samples WHERE file_url LIKE 'samples/%%' "
                            "ORDER BY id").fetchall()
        shown = next(r for r in rows if r[2])
        hidden = next(r for r in rows if not r[2])
        dry = cli()
        assert dry.returncode == 0 and "dry run; pass --apply" in dry.stdout, dry.stderr
        applied = cli("--apply")
        assert applied.returncode == 0, applied.stderr
        with httpx.Client(base_url=settings.edge.base_url) as edge:
            first, second = edge.get(f"/audio/{shown[1]}"), edge.get(f"/audio/{shown[1]}")
            assert (first.status_code, second.headers["x-cache"]) == (200, "HIT")
            assert first.content == primary.get(shown[1])
            # published with the audio zone's headers (the TTL table), and served as the copy says
            assert first.headers["cache-control"] == "public, max-age=86400, s-maxage=604800"
            assert edge.get(f"/audio/{hidden[1]}").status_code != 200  # an unapproved sample is nobody's to hear
            assert anonymous_status(primary, shown[1]) == 403  # the bucket of record is private
            try:
                conn.execute("UPDATE audio_samples SET approved = false WHERE id = %s", (shown[0],))
                withdrawn = cli("--apply")
                assert withdrawn.returncode == 0 and f"withdrew {shown[1]}" in withdrawn.stdout, withdrawn.stderr
                gone = edge.get(f"/audio/{shown[1]}")  # it was cached for a day: the run purged it
                assert gone.status_code != 200 and gone.content != first.content
                assert conn.execute("SELECT edge_purged FROM csl_ops.publication_events WHERE object_key = %s "
                                    "ORDER BY id DESC LIMIT 1", (shown[1],)).fetchone()[0] is True
            finally:
                conn.execute("UPDATE audio_samples SET approved = true WHERE id = %s", (shown[0],))
                assert cli("--apply").returncode == 0
            assert edge.get(f"/audio/{shown[1]}").status_code == 200
        conn.execute("UPDATE audio_samples SET approved = false")
        refused = cli("--apply")
        conn.execute("UPDATE audio_samples SET approved = true WHERE id = ANY(%s)", ([r[0] for r in rows if r[2]],))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "max_share" in refused.stderr


def test_a_publication_run_logs_what_it_published_itself(world, caplog):
    import logging

    key = world.sample(0, b"RIFF logged")
    caplog.set_level(logging.INFO, logger="csl.storage.publication")
    world.run(dry_run=True)
    world.run()
    assert [r.getMessage() for r in caplog.records if r.name == "csl.storage.publication"
            and key in r.getMessage()] == [f"would publish {key} (new)", f"published {key} (new)"]
