"""csl.storage against the real SeaweedFS endpoints, and what the published bucket and the edge
serve to anyone (the bucket of record: nothing)."""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from csl.errors import ProviderUnavailable
from csl.storage import HEALTH_PREFIX, PUBLISHED_PREFIXES, StorageProvider, public_read_policy

from ...conftest import REPO


@pytest.fixture
def primary(settings):
    return StorageProvider(settings.provider("primary"), max_attempts=1)


@pytest.fixture
def fallback(settings):
    return StorageProvider(settings.provider("fallback"), max_attempts=1)


@pytest.fixture
def scratch(primary, fallback):
    """Keys this test writes (on either provider); all deleted afterwards, so no later sweep finds orphans."""
    written: list[tuple[StorageProvider, str]] = []
    yield written
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: item[0].delete(item[1]), written))


def test_put_head_get_delete_round_trip_with_checksum(primary):
    key = f"tests/{uuid.uuid4().hex[:8]}/roundtrip.bin"
    stored = primary.put(key, b"\x00\x01 csl", content_type="application/octet-stream",
                         metadata={"contributor": "c-1"})
    head = primary.head(key)
    assert head["size"] == 6 and head["metadata"] == {"sha256": stored["sha256"], "contributor": "c-1"}
    assert primary.get(key) == b"\x00\x01 csl"
    primary.delete(key)
    assert primary.exists(key) is False


@pytest.mark.parametrize(("setting", "sends"), [("when_supported", True), ("when_required", False)])
def test_the_provider_setting_decides_whether_an_upload_carries_a_checksum(settings, scratch, setting, sends):
    # boto3 >= 1.36 adds a CRC32 to every upload unless told "when_required" (Supabase, R2, old MinIO)
    from dataclasses import replace

    provider = StorageProvider(replace(settings.provider("primary"), request_checksum_calculation=setting),
                               max_attempts=1)
    sent: list[dict[str, str]] = []
    provider.client.meta.events.register("before-send.s3.PutObject",
                                         lambda request, **_: sent.append(dict(request.headers)))
    key = f"tests/{uuid.uuid4().hex[:8]}/checksum.bin"
    scratch.append((provider, key))
    provider.put(key, b"checksummed?")
    headers = {name.lower(): str(value) for name, value in sent[0].items()}
    carried = any(name.startswith("x-amz-checksum-") for name in headers) or "x-amz-checksum" in headers.get(
        "x-amz-trailer", "")
    assert carried is sends, headers
    assert provider.get(key) == b"checksummed?"


def test_listing_is_sorted_and_paged(fallback, scratch):
    base = f"tests/list{uuid.uuid4().hex[:6]}/"
    keys = [f"{base}{i % 256:02x}/{i:05d}.wav" for i in range(2300)]
    scratch.extend((fallback, k) for k in keys)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: fallback.put(k, b"x"), keys))
    listed = [o.key for o in fallback.iter_objects(base)]
    assert listed == sorted(keys)  # three pages of at most 1000
    resume = sorted(keys)[2000]
    assert [o.key for o in fallback.iter_objects(base, start_after=resume)] == sorted(keys)[2001:]


def test_health_probe_leaves_nothing_behind(primary):
    report = primary.health()
    assert report["ok"] is True and report["latency_ms"] > 0
    assert list(primary.iter_objects(HEALTH_PREFIX)) == []


def test_a_stopped_endpoint_is_an_error_naming_the_provider_not_false(fallback, service_down):
    service_down("s3-fallback")
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="storage provider 'fallback'.*cannot reach"):
        fallback.exists("anything.wav")
    report = fallback.health()
    assert report["ok"] is False and "fallback" in report["error"]
    assert time.monotonic() - started < 15, "a provider that is down must fail fast"


def test_the_published_bucket_is_served_through_the_edge(primary, settings, scratch):
    key = f"samples/zz/{uuid.uuid4()}.wav"
    scratch.append((primary.published(), key))
    primary.published().put(key, b"RIFF....WAVEfmt ", content_type="audio/wav")
    with httpx.Client(base_url=settings.edge.base_url) as edge:
        first = edge.get(f"/audio/{key}")
        second = edge.get(f"/audio/{key}")
        assert first.status_code == 200 and first.content == b"RIFF....WAVEfmt "
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert edge.get(f"/audio/{key}", headers={"Referer": "https://evil.example/"}).status_code == 403


# -- issue 12, item 11: only what is published is public ---------------------------------------
FOLDERS = {"published": "samples/zz/{id}.wav", "quarantine": "_quarantine/20261201/samples/zz/{id}.wav",
           "tmp": "tmp/{id}.wav", "uploads tmp": "uploads/tmp/{id}.wav", "health probe": "_csl_health/{id}",
           "generation result": "generations/zz/{id}.mp3", "upload": "uploads/zz/{id}.wav",
           "look-alike": "samplesX/{id}.wav"}


@pytest.fixture
def planted(primary, scratch):
    """One object in each published and private folder, in the bucket of record and in the
    published bucket (as if someone had put it there): {folder: key}."""
    keys = {folder: key.format(id=uuid.uuid4()) for folder, key in FOLDERS.items()}
    primary.ensure_buckets()  # what devstack's buckets_up does
    for bucket in (primary, primary.published()):
        for key in keys.values():
            bucket.put(key, b"RIFF private? " + key.encode(), content_type="audio/wav")
            scratch.append((bucket, key))
    return keys


def test_only_the_published_bucket_has_a_policy_and_it_lets_anyone_read_the_published_folders(primary, planted):
    assert primary.settings.public_bucket  # the dev stack's primary provider is the public one
    published = primary.published()
    assert published.bucket == primary.settings.published_bucket != primary.bucket
    policy = json.loads(primary.client.get_bucket_policy(Bucket=published.bucket)["Policy"])
    resources = [r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                          else s["Resource"])]
    assert resources == [f"arn:aws:s3:::{published.bucket}/{p}*" for p in PUBLISHED_PREFIXES]
    assert resources == public_read_policy(published.bucket)["Statement"][0]["Resource"]
    anonymous = httpx.Client(base_url=primary.settings.endpoint_url)  # no credentials at all
    answers = {folder: anonymous.get(f"/{published.bucket}/{key}").status_code for folder, key in planted.items()}
    assert answers == {folder: 200 if folder == "published" else 403 for folder in planted}
    # the bucket of record holds unapproved samples too: nobody reads it anonymously
    assert {anonymous.get(f"/{primary.bucket}/{key}").status_code for key in planted.values()} == {403}
    for bucket in (primary.bucket, published.bucket):
        assert anonymous.get(f"/{bucket}", params={"list-type": "2"}).status_code == 403  # no listing


def test_a_policy_left_on_the_bucket_of_record_is_removed(primary, planted):
    primary.ensure_bucket(public_read=True)  # how the dev stack made it before publication existed
    assert httpx.get(f"{primary.settings.endpoint_url}/{primary.bucket}/{planted['published']}").status_code == 200
    primary.ensure_buckets()
    assert httpx.get(f"{primary.settings.endpoint_url}/{primary.bucket}/{planted['published']}").status_code == 403


def test_the_edge_serves_only_published_keys(settings, planted):
    ident = planted["published"].rsplit("/", 1)[1]
    with httpx.Client(base_url=settings.edge.base_url) as edge:
        assert edge.get(f"/audio/{planted['published']}").status_code == 200
        assert edge.get(f"/{planted['published']}").status_code == 200
        for folder, key in planted.items():
            if folder == "published":
                continue
            for path in (f"/audio/{key}", f"/{key}"):
                answer = edge.get(path)
                assert (answer.status_code, answer.text.strip()) == (403, "Not published"), (path, answer.text)
    # tricks that reach another folder from a published one, sent as typed (no client-side normalising)
    host = urlsplit(settings.edge.base_url).netloc
    tmp_key = planted["tmp"]
    for path in (f"/audio/samples/../{tmp_key}", f"/audio/samples/zz/../../{tmp_key}", f"/audio/samples//../{tmp_key}",
                 f"/audio/samples/%2e%2e/{tmp_key}", f"/audio/samples/..%2f{tmp_key}", f"/audio/samples/.%2E/{tmp_key}",
                 f"/audio/samples/zz/%2F..%2F..%2F{tmp_key}", f"/audio/samples\\..\\{tmp_key}",
                 f"/audio//{tmp_key}", f"/audio/./{tmp_key}", f"/audio/samples/zz/./{ident}"):
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert (response.status, body.strip()) == (403, b"Not published"), path


def test_the_edge_and_the_bucket_policy_publish_the_same_folders():
    vcl = (REPO / "stack" / "varnish" / "edge.vcl").read_text()
    published = re.search(r'req\.url !~ "\^/\{\{BUCKET\}\}/\(([^)]*)\)/', vcl)
    assert published, "edge.vcl must check the published folders"
    assert [p + "/" for p in published.group(1).split("|")] == list(PUBLISHED_PREFIXES)


def test_ensure_buckets_waits_for_an_endpoint_that_is_starting(fallback, stack, service_down):
    """A fresh endpoint (devstack's, the compose's init) refuses requests for a moment: with
    ``wait_s`` its buckets are made once it answers; without, the first refusal is the answer."""
    import threading

    service_down("s3-fallback")
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="fallback"):
        fallback.ensure_buckets()
    assert time.monotonic() - started < 10
    threading.Timer(2.0, stack.start, args=("s3-fallback",)).start()
    assert fallback.ensure_buckets(wait_s=90) == []  # the bucket is there already: nothing created
    assert time.monotonic() - started >= 2.0
