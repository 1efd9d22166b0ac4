"""csl.storage against the real SeaweedFS endpoints."""

from __future__ import annotations

import time

import pytest

from csl.errors import ProviderUnavailable
from csl.storage import HEALTH_PREFIX, StorageProvider


@pytest.fixture
def primary(settings):
    return StorageProvider(settings.provider("primary"), max_attempts=1)


@pytest.fixture
def fallback(settings):
    return StorageProvider(settings.provider("fallback"), max_attempts=1)


def test_put_head_get_delete_round_trip_with_checksum(primary):
    stored = primary.put("tests/roundtrip.bin", b"\x00\x01 csl", content_type="application/octet-stream",
                         metadata={"contributor": "c-1"})
    head = primary.head("tests/roundtrip.bin")
    assert head["size"] == 6 and head["metadata"] == {"sha256": stored["sha256"], "contributor": "c-1"}
    assert primary.get("tests/roundtrip.bin") == b"\x00\x01 csl"
    primary.delete("tests/roundtrip.bin")
    assert primary.exists("tests/roundtrip.bin") is False


def test_listing_is_sorted_and_paged(fallback):
    keys = [f"tests/list/{i % 256:02x}/{i:05d}.wav" for i in range(2300)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: fallback.put(k, b"x"), keys))
    listed = [o.key for o in fallback.iter_objects("tests/list/")]
    assert listed == sorted(keys)  # three pages of at most 1000
    resume = sorted(keys)[2000]
    assert [o.key for o in fallback.iter_objects("tests/list/", start_after=resume)] == sorted(keys)[2001:]


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


def test_public_bucket_served_through_the_edge(primary, settings):
    import httpx

    primary.put("tests/edge/probe.wav", b"RIFF....WAVEfmt ", content_type="audio/wav")
    with httpx.Client(base_url=settings.edge.base_url) as edge:
        first = edge.get("/audio/tests/edge/probe.wav")
        second = edge.get("/audio/tests/edge/probe.wav")
        assert first.status_code == 200 and first.content == b"RIFF....WAVEfmt "
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert edge.get("/audio/tests/edge/probe.wav", headers={"Referer": "https://evil.example/"}).status_code == 403
