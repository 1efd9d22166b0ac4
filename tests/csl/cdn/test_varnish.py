"""The local Varnish edge as a CdnProvider, against the test stack's real edge and published bucket:
MISS then HIT, purges by URL, xkey tag, prefix and zone (the next GET is a MISS with the new bytes),
the headers each zone's objects are served with, the purge ACL, the hotlink rule, the hit ratio."""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from csl.cdn import CachePolicy, Cdn, CdnInputError, CdnRefused, PurgeBatch, VarnishEdge, batch_id_for
from csl.storage import StorageProvider


@pytest.fixture
def cdn(settings):
    with Cdn.from_settings(settings) as client:
        yield client


@pytest.fixture
def published(settings):
    """The primary's published bucket (the edge's backend); every key the test writes is deleted after."""
    bucket = StorageProvider(settings.provider("primary"), max_attempts=1).published()
    written: list[str] = []
    bucket.written = written  # type: ignore[attr-defined]
    yield bucket
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(bucket.delete, written))


@pytest.fixture
def folder() -> str:
    return f"samples/t{uuid.uuid4().hex[:10]}"


def put(bucket: StorageProvider, key: str, body: bytes, content_type: str = "audio/wav", tags=()) -> None:
    headers = CachePolicy().for_content_type(content_type, tags=tags)
    bucket.put(key, body, content_type=content_type, metadata=headers.metadata, cache_control=headers.cache_control)
    if key not in bucket.written:
        bucket.written.append(key)


def get(cdn: Cdn, zone: str, key: str, **kwargs) -> httpx.Response:
    return httpx.get(f"{cdn.zones[zone].base_url}/{key}", timeout=10, **kwargs)


def batch(zone, kind, items):
    return PurgeBatch(batch_id_for("test", "varnish", zone.name, kind, items), "varnish", zone.name, kind, tuple(items))


def cached(cdn: Cdn, zone: str, key: str, body: bytes) -> None:
    first, second = get(cdn, zone, key), get(cdn, zone, key)
    assert (first.status_code, first.content, first.headers["x-cache"]) == (200, body, "MISS"), first.text
    assert (second.content, second.headers["x-cache"]) == (body, "HIT")


def test_miss_then_hit_with_the_headers_of_each_zone(cdn, published, folder):
    sound, cover = f"{folder}/take.wav", f"{folder}/cover.png"
    put(published, sound, b"RIFF....WAVEfmt ")
    put(published, cover, b"\x89PNG\r\n\x1a\n cover", content_type="image/png")
    cached(cdn, "audio", sound, b"RIFF....WAVEfmt ")
    cached(cdn, "images", cover, b"\x89PNG\r\n\x1a\n cover")
    audio, image = get(cdn, "audio", sound), get(cdn, "images", cover)
    assert audio.headers["cache-control"] == "public, max-age=86400, s-maxage=604800"
    assert image.headers["cache-control"] == "public, max-age=86400, s-maxage=2592000"
    for answer in (audio, image):
        assert int(answer.headers["age"]) >= 0 and answer.headers["x-varnish"]
        assert not {"x-url", "x-zone", "x-amz-meta-surrogate-control", "x-amz-meta-xkey", "xkey"} & set(answer.headers)
    # the tags the edge keeps (shown to the purgers only): the object, its folder, its own
    assert set(audio.headers["x-xkey"].split()) == {f"obj:/{published.bucket}/{sound}",
                                                    f"dir:/{published.bucket}/{folder}", "zone:audio"}
    assert "zone:images" in image.headers["x-xkey"].split()
    # the zones share one cache: the same object through another zone's path is the same HIT
    assert get(cdn, "static", sound).headers["x-cache"] == "HIT"


def test_an_object_without_headers_of_its_own_gets_the_edge_default(cdn, published, folder):
    key = f"{folder}/old.wav"
    published.put(key, b"RIFF old", content_type="audio/wav")
    published.written.append(key)
    assert get(cdn, "audio", key).headers["cache-control"] == "public, max-age=86400, s-maxage=86400"


def test_purge_by_url_serves_the_new_bytes(cdn, published, folder):
    key = f"{folder}/url.wav"
    put(published, key, b"RIFF first")
    cached(cdn, "audio", key, b"RIFF first")
    put(published, key, b"RIFF second")
    assert get(cdn, "audio", key).content == b"RIFF first"  # cached for a week
    zone = cdn.zone_for_url(f"{cdn.zones['audio'].base_url}/{key}")
    result = cdn.provider("audio").purge(zone, batch(zone, "url", [f"{zone.base_url}/{key}"]))
    assert (result.status, result.purged) == ("done", 1)
    again = get(cdn, "audio", key)
    assert (again.headers["x-cache"], again.content) == ("MISS", b"RIFF second")
    with pytest.raises(CdnInputError, match="not under zone 'audio'"):
        cdn.provider("audio").purge(zone, batch(zone, "url", [f"{cdn.zones['images'].base_url}/{key}"]))


def test_purge_by_xkey_tag_counts_what_it_dropped(cdn, published, folder):
    tag = f"take:{uuid.uuid4().hex[:8]}"
    keys = [f"{folder}/a.wav", f"{folder}/b.wav"]
    for key in keys:
        put(published, key, b"RIFF old " + key.encode(), tags=[tag])
        cached(cdn, "audio", key, b"RIFF old " + key.encode())
        put(published, key, b"RIFF new " + key.encode(), tags=[tag])
    zone = cdn.zones["audio"]
    result = cdn.provider("audio").purge(zone, batch(zone, "tag", [tag]))
    assert (result.status, result.purged) == ("done", 2)  # the reply's count: xkey does not move MAIN.n_purges
    for key in keys:
        answer = get(cdn, "audio", key)
        assert (answer.headers["x-cache"], answer.content) == ("MISS", b"RIFF new " + key.encode())
    for bad in ("two words", "a,b"):
        with pytest.raises(CdnInputError, match="xkey tag"):
            cdn.provider("audio").purge(zone, batch(zone, "tag", [bad]))


def test_purge_by_prefix_bans_that_prefix_only_and_never_as_a_regex(cdn, published, folder):
    inside, dotted, lookalike, outside = (f"{folder}/in/x.wav", f"{folder}/a.wav", f"{folder}/aXwav",
                                          f"{folder}/out/y.wav")
    for key in (inside, dotted, lookalike, outside):
        put(published, key, b"RIFF old")
        cached(cdn, "audio", key, b"RIFF old")
        put(published, key, b"RIFF new")
    zone = cdn.zones["audio"]
    edge = cdn.provider("audio")
    # a URL, a path under the zone and a key prefix are all the same kind of prefix; "." is literal
    result = edge.purge(zone, batch(zone, "prefix", [f"{zone.base_url}/{folder}/in/", f"/audio/{folder}/a.w"]))
    assert result.status == "done" and result.detail["banned"] == [f"{folder}/in/", f"{folder}/a[.]w"]
    assert [get(cdn, "audio", k).headers["x-cache"] for k in (inside, dotted, lookalike, outside)] == [
        "MISS", "MISS", "HIT", "HIT"]
    assert get(cdn, "audio", inside).content == b"RIFF new"
    for hostile in (f"{folder}/.*", f"{folder}/(a|b)", f"{folder}/a\"b", f"{folder}/../x", "samples/a b",
                    "https://evil.example/audio/samples/", f"/images/{folder}/", ""):
        with pytest.raises(CdnInputError, match="prefix"):
            edge.purge(zone, batch(zone, "prefix", [hostile]))
    # the edge itself refuses a regex a client other than csl.cdn might send
    refused = httpx.request("PURGE", f"{edge.base_url}/", headers={"x-ban-prefix": "samples/.*"})
    assert refused.status_code == 400 and get(cdn, "audio", lookalike).headers["x-cache"] == "HIT"


def test_purge_everything_bans_one_zone(cdn, published, folder):
    sound, cover = f"{folder}/all.wav", f"{folder}/all.png"
    put(published, sound, b"RIFF all")
    put(published, cover, b"\x89PNG all", content_type="image/png")
    cached(cdn, "audio", sound, b"RIFF all")
    cached(cdn, "images", cover, b"\x89PNG all")
    zone = cdn.zones["audio"]
    assert cdn.provider("audio").purge(zone, batch(zone, "everything", [])).status == "done"
    assert get(cdn, "audio", sound).headers["x-cache"] == "MISS"
    assert get(cdn, "images", cover).headers["x-cache"] == "HIT"


def test_purges_from_outside_the_acl_are_refused(cdn, published, folder, settings):
    key = f"{folder}/acl.wav"
    put(published, key, b"RIFF acl")
    cached(cdn, "audio", key, b"RIFF acl")
    # the edge listens on 127.0.0.1 and its ACL holds 127.0.0.1 and ::1: 127.0.0.2 is someone else
    outsider = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=outsider, timeout=10) as client:
        for headers in ({}, {"xkey-purge": f"obj:/{published.bucket}/{key}"}, {"x-ban-prefix": "samples/"},
                        {"x-ban-zone": "audio"}):
            answer = client.request("PURGE", f"{settings.edge.base_url}/audio/{key}", headers=headers)
            assert (answer.status_code, answer.text.strip()) == (403, "Forbidden")
        assert "x-xkey" not in client.get(f"{settings.edge.base_url}/audio/{key}").headers  # tags: purgers only
    zone = cdn.zones["audio"]
    with VarnishEdge(settings.edge, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as edge:
        with pytest.raises(CdnRefused, match="403") as caught:
            edge.purge(zone, batch(zone, "url", [f"{zone.base_url}/{key}"]))
        assert caught.value.status == 403
    assert get(cdn, "audio", key).headers["x-cache"] == "HIT"


def test_the_hotlink_rule_still_refuses_a_foreign_referer(cdn, published, folder):
    key = f"{folder}/hot.wav"
    put(published, key, b"RIFF hot")
    assert get(cdn, "audio", key, headers={"Referer": "https://evil.example/page"}).status_code == 403
    assert get(cdn, "audio", key, headers={"Referer": "https://www.culturalsoundlab.com/play"}).status_code == 200


def test_health_per_zone_with_the_hit_ratio(cdn, published, folder, settings):
    key = f"{folder}/ratio.wav"
    put(published, key, b"RIFF ratio")
    cached(cdn, "audio", key, b"RIFF ratio")
    report = cdn.health()
    assert set(report) == {"audio", "images", "static"}
    for name, info in report.items():
        assert info["ok"] is True and info["zone"] == name and info["backend_healthy"] is True
        assert 0 < info["hit_ratio"] <= 1 and info["cache_counters"]["cache_hit"] >= 1
    # without varnishstat (or its folder) there is no ratio, and the edge is still healthy
    zone = cdn.zones["audio"]
    with VarnishEdge(settings.edge, varnishstat="/nonexistent/varnishstat") as edge:
        info = edge.health(zone)
        assert info["ok"] is True and info["hit_ratio"] is None
    no_dir = dataclasses.replace(settings.edge, varnish_work_dir=None)
    with VarnishEdge(no_dir) as edge:
        assert edge.hit_ratio() is None and edge.health()["ok"] is True
