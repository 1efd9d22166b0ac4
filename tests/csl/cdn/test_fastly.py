"""FastlyProvider at the HTTP layer: surrogate-key, URL and purge-all calls and their answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from csl.cdn.base import BatchTooLarge, CdnInputError, CdnProvider, CdnRefused, CdnUnavailable, Throttled, Zone
from csl.cdn.fastly import FastlyProvider
from csl.config import Secret

from .fake_http import Script, batch, body_of

TOKEN = "fastly-token-Q1w2E3r4T5y6"
ZONE = Zone(name="images", provider="fastly", base_url="https://img.example.com/images",
            zone_id="SU1Z0isxPaozGVKXdv0eY")


def provider(script: Script, **kwargs) -> FastlyProvider:
    return FastlyProvider(api_token=Secret(TOKEN), transport=script.transport(), **kwargs)


def test_surrogate_keys_go_in_one_batch_call_with_the_fastly_key():
    script = Script(httpx.Response(200, json={"track:1": "108-1391560174-974124", "album:7": "108-1391560174-974125"}))
    with provider(script) as fastly:
        assert isinstance(fastly, CdnProvider)
        result = fastly.purge(ZONE, batch("fastly", "images", "tag", "track:1", "album:7"))
    (sent,) = script.requests
    assert (sent.method, str(sent.url)) == ("POST", "https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge")
    assert sent.headers["fastly-key"] == TOKEN
    assert "fastly-soft-purge" not in sent.headers
    assert body_of(sent) == {"surrogate_keys": ["track:1", "album:7"]}
    assert result.status == "done"
    assert result.detail["purge_ids"] == {"track:1": "108-1391560174-974124", "album:7": "108-1391560174-974125"}


def test_soft_purge_marks_key_and_url_purges_but_not_purge_all():
    script = Script(*[httpx.Response(200, json={"status": "ok", "id": "108-1"})] * 3)
    fastly = provider(script, soft_purge=True)
    fastly.purge(ZONE, batch("fastly", "images", "tag", "k"))
    fastly.purge(ZONE, batch("fastly", "images", "url", "https://img.example.com/images/a.webp"))
    fastly.purge(ZONE, batch("fastly", "images", "everything"))
    assert [r.headers.get("fastly-soft-purge") for r in script.requests] == ["1", "1", None]


def test_a_url_is_purged_by_post_to_purge_and_the_cached_url_without_scheme():
    script = Script(httpx.Response(200, json={"status": "ok", "id": "108-1391560174-974124"}),
                    httpx.Response(200, json={"status": "ok", "id": "108-2"}))
    fastly = provider(script)
    result = fastly.purge(ZONE, batch("fastly", "images", "url", "https://img.example.com/images/a%20b.webp"))
    fastly.purge(ZONE, batch("fastly", "images", "url", "https://img.example.com/images/c.webp?w=200"))
    first, second = script.requests
    assert first.method == "POST"
    assert first.url.raw_path == b"/purge/img.example.com/images/a%20b.webp"
    assert second.url.raw_path == b"/purge/img.example.com/images/c.webp%3Fw=200"
    assert first.headers["fastly-key"] == TOKEN
    assert (result.status, result.request_id) == ("done", "108-1391560174-974124")


@pytest.mark.parametrize("url", [
    "https://img.example.com/images/../../service/SU1Z0isxPaozGVKXdv0eY/purge_all",
    "https://img.example.com/images/%2e%2e/x",
    "https://other.example.com/images/a.webp",
])
def test_a_url_that_would_leave_the_purge_endpoint_or_the_zone_is_refused_before_any_call(url):
    script = Script()
    with pytest.raises(CdnInputError, match="not a plain URL of zone 'images'"):
        provider(script).purge(ZONE, batch("fastly", "images", "url", url))
    assert script.requests == []


def test_everything_is_purge_all_of_the_service():
    script = Script(httpx.Response(200, json={"status": "ok"}))
    assert provider(script).purge(ZONE, batch("fastly", "images", "everything")).status == "done"
    assert (script.requests[0].method, script.requests[0].url.path) == (
        "POST", "/service/SU1Z0isxPaozGVKXdv0eY/purge_all")


def test_limits_one_url_per_call_256_keys_no_prefixes():
    limits = FastlyProvider(api_token=Secret(TOKEN)).limits
    assert dict(limits.max_items) == {"url": 1, "tag": 256, "everything": 1}
    assert not limits.supports("prefix") and not limits.asynchronous
    script = Script()
    with pytest.raises(CdnInputError, match=r"'fastly' cannot purge by 'prefix'"):
        provider(script).purge(ZONE, batch("fastly", "images", "prefix", "/images/album-7/"))
    with pytest.raises(BatchTooLarge):
        provider(script).purge(ZONE, batch("fastly", "images", "tag", *[f"k{i}" for i in range(257)]))
    assert script.requests == []


def test_an_error_body_is_a_refusal_naming_msg_and_detail():
    script = Script(httpx.Response(401, json={"msg": "Provided credentials are missing or invalid",
                                              "detail": "Token is expired"}))
    with pytest.raises(CdnRefused) as refused:
        provider(script).purge(ZONE, batch("fastly", "images", "tag", "k"))
    assert refused.value.status == 401
    assert "Provided credentials are missing or invalid: Token is expired" in str(refused.value)


def test_429_is_throttled_with_retry_after_and_5xx_or_network_is_unavailable():
    script = Script(httpx.Response(429, headers={"Retry-After": "12"}, json={"msg": "Too many requests"}),
                    httpx.Response(503, text="Service Unavailable"),
                    httpx.ConnectTimeout("timed out"))
    fastly = provider(script)
    with pytest.raises(Throttled) as throttled:
        fastly.purge(ZONE, batch("fastly", "images", "everything"))
    assert throttled.value.retry_after_s == 12
    for _ in range(2):
        with pytest.raises(CdnUnavailable):
            fastly.purge(ZONE, batch("fastly", "images", "tag", "k"))


def test_completion_is_done_on_reply_and_health_never_raises():
    script = Script(httpx.Response(200, json={"id": "SU1Z0isxPaozGVKXdv0eY", "name": "images-prod"}),
                    httpx.Response(403, json={"msg": "Forbidden", "detail": f"token {TOKEN} lacks global:read"}),
                    httpx.ConnectError("refused"))
    fastly = provider(script)
    assert fastly.completion(ZONE, "108-1") == "done"
    assert asyncio.run(fastly.completion_async(ZONE, "108-1")) == "done"
    up, denied, down = (fastly.health(ZONE) for _ in range(3))
    assert (script.requests[0].method, script.requests[0].url.path) == ("GET", "/service/SU1Z0isxPaozGVKXdv0eY")
    assert up["ok"] is True and up["service_name"] == "images-prod" and up["latency_ms"] >= 0
    assert denied["ok"] is False and "Forbidden" in denied["error"] and TOKEN not in denied["error"]
    assert down["ok"] is False and "unreachable" in down["error"]
    assert TOKEN not in repr(fastly)
