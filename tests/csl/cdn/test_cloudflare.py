"""CloudflareProvider at the HTTP layer: what it sends, and how each documented answer maps."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from csl.cdn.base import BatchTooLarge, CdnInputError, CdnProvider, CdnRefused, CdnUnavailable, Throttled, Zone
from csl.cdn.cloudflare import CloudflareProvider
from csl.config import ConfigError, Secret

from .fake_http import Script, batch, body_of

TOKEN = "cf-token-Zx81q0w9e8r7t6y5"
ZONE = Zone(name="audio", provider="cloudflare", base_url="https://cdn.example.com/audio",
            zone_id="023e105f4ecef8ad9ca31a8372d0c353")
PURGE_URL = "https://api.cloudflare.com/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/purge_cache"
OK = {"success": True, "errors": [], "messages": [], "result": {"id": "9a7806061c88ada191ed06f989cc3dac"}}


def refusal(status: int, code: int, message: str, **kwargs) -> httpx.Response:
    return httpx.Response(status, json={"success": False, "errors": [{"code": code, "message": message}],
                                        "messages": [], "result": None}, **kwargs)


def provider(script: Script, **kwargs) -> CloudflareProvider:
    return CloudflareProvider(api_token=Secret(TOKEN), transport=script.transport(), **kwargs)


def test_url_purge_sends_the_files_with_the_bearer_token_and_is_done_on_reply():
    script = Script(httpx.Response(200, json=OK))
    urls = ("https://cdn.example.com/audio/a.mp3", "https://cdn.example.com/audio/b%20c.mp3")
    with provider(script) as cf:
        assert isinstance(cf, CdnProvider)
        result = cf.purge(ZONE, batch("cloudflare", "audio", "url", *urls))
    (sent,) = script.requests
    assert (sent.method, str(sent.url)) == ("POST", PURGE_URL)
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["content-type"] == "application/json"
    assert body_of(sent) == {"files": list(urls)}
    assert (result.status, result.request_id) == ("done", "9a7806061c88ada191ed06f989cc3dac")
    assert result.batch_id == batch("cloudflare", "audio", "url", *urls).batch_id


def test_a_zone_with_cache_key_headers_sends_each_url_with_them():
    zone = Zone(name="images", provider="cloudflare", base_url="https://cdn.example.com/images", zone_id="z1",
                options={"cache_key_headers": {"Origin": "https://www.example.com", "CF-Device-Type": "mobile"}})
    script = Script(httpx.Response(200, json=OK))
    provider(script).purge(zone, batch("cloudflare", "images", "url", "https://cdn.example.com/images/x.webp"))
    assert body_of(script.requests[0]) == {"files": [{
        "url": "https://cdn.example.com/images/x.webp",
        "headers": {"Origin": "https://www.example.com", "CF-Device-Type": "mobile"}}]}


def test_tags_and_prefixes_go_in_their_own_fields_prefixes_without_a_scheme():
    script = Script(httpx.Response(200, json=OK), httpx.Response(200, json=OK))
    cf = provider(script)
    cf.purge(ZONE, batch("cloudflare", "audio", "tag", "track:1", "album:7"))
    cf.purge(ZONE, batch("cloudflare", "audio", "prefix", "https://cdn.example.com/audio/album-7/",
                         "cdn.example.com/audio/album-8/", "/audio/album-9/"))
    assert body_of(script.requests[0]) == {"tags": ["track:1", "album:7"]}
    assert body_of(script.requests[1]) == {"prefixes": ["cdn.example.com/audio/album-7/",
                                                        "cdn.example.com/audio/album-8/",
                                                        "cdn.example.com/audio/album-9/"]}


def test_everything_purges_only_this_zone_unless_it_is_alone_in_the_cloudflare_zone():
    whole_host = Zone(name="static", provider="cloudflare", base_url="https://static.example.com", zone_id="z1")
    alone = Zone(name="static", provider="cloudflare", base_url="https://static.example.com", zone_id="z1",
                 options={"purge_everything": True})
    script = Script(*[httpx.Response(200, json=OK)] * 3)
    cf = provider(script)
    for zone in (ZONE, whole_host, alone):
        assert cf.purge(zone, batch("cloudflare", zone.name, "everything")).status == "done"
    assert [body_of(r) for r in script.requests] == [
        {"prefixes": ["cdn.example.com/audio"]}, {"hosts": ["static.example.com"]}, {"purge_everything": True}]


def test_a_documented_refusal_names_its_code_and_message():
    script = Script(refusal(400, 1107, "Only enterprise zones can purge by tag."))
    with pytest.raises(CdnRefused) as refused:
        provider(script).purge(ZONE, batch("cloudflare", "audio", "tag", "track:1"))
    assert type(refused.value) is CdnRefused
    assert (refused.value.status, refused.value.code) == (400, 1107)
    assert "1107" in str(refused.value) and "Only enterprise zones can purge by tag." in str(refused.value)


def test_a_200_that_says_success_false_is_a_refusal_too():
    script = Script(refusal(200, 1100, "Tag exceeds maximum length of 1024 characters"))
    with pytest.raises(CdnRefused, match="1100") as refused:
        provider(script).purge(ZONE, batch("cloudflare", "audio", "tag", "x" * 1025))
    assert type(refused.value) is CdnRefused


@pytest.mark.parametrize("answer", [
    refusal(400, 1004, "Purge request invalid: you cannot provide more than 100 items"),
    httpx.Response(413, text="<html>Request Entity Too Large</html>"),
])
def test_a_refused_batch_size_is_batch_too_large(answer):
    script = Script(answer)
    with pytest.raises(BatchTooLarge):
        provider(script).purge(ZONE, batch("cloudflare", "audio", "prefix", "cdn.example.com/audio/a/"))
    assert len(script.requests) == 1


def test_a_batch_over_the_limit_is_refused_before_any_call():
    script = Script()
    cf = provider(script, max_urls_per_call=2)
    with pytest.raises(BatchTooLarge, match="3 url items"):
        cf.purge(ZONE, batch("cloudflare", "audio", "url", "https://a/1", "https://a/2", "https://a/3"))
    with pytest.raises(CdnInputError, match=r"'cloudflare' cannot purge by 'xkey'"):
        cf.purge(ZONE, batch("cloudflare", "audio", "xkey", "k"))
    with pytest.raises(CdnInputError, match="no zone_id"):
        cf.purge(Zone(name="audio", provider="cloudflare", base_url="https://x"), batch("cloudflare", "audio", "tag", "t"))
    assert script.requests == []


def test_429_is_throttled_with_the_retry_after_seconds():
    script = Script(refusal(429, 10000, "Rate limited", headers={"Retry-After": "37"}))
    with pytest.raises(Throttled) as throttled:
        provider(script).purge(ZONE, batch("cloudflare", "audio", "tag", "t"))
    assert throttled.value.retry_after_s == 37


@pytest.mark.parametrize("answer", [
    httpx.Response(502, text="<html>Bad gateway</html>"),
    httpx.ConnectError("connection refused"),
    httpx.ReadTimeout("timed out"),
])
def test_5xx_and_network_failures_are_unavailable(answer):
    with pytest.raises(CdnUnavailable, match="purge of batch"):
        provider(Script(answer)).purge(ZONE, batch("cloudflare", "audio", "tag", "t"))


def test_limits_follow_the_plan():
    free = CloudflareProvider(api_token=Secret(TOKEN)).limits
    assert (free.rate_per_s, free.burst, free.items_per_s) == (5 / 60, 25, 800)
    assert dict(free.max_items) == {"url": 30, "tag": 100, "prefix": 100, "everything": 1}
    enterprise = CloudflareProvider(api_token=Secret(TOKEN), plan="enterprise", max_urls_per_call=500).limits
    assert (enterprise.rate_per_s, enterprise.burst, enterprise.items_per_s) == (50, 500, 3000)
    assert enterprise.max_items["url"] == 500 and not enterprise.asynchronous
    with pytest.raises(ConfigError, match="unknown Cloudflare plan 'gold'"):
        CloudflareProvider(api_token=Secret(TOKEN), plan="gold")


def test_completion_is_done_on_reply():
    cf = provider(Script())
    assert cf.completion(ZONE, "9a78") == "done"
    assert asyncio.run(cf.completion_async(ZONE, "9a78")) == "done"


def test_health_reads_the_zone_and_never_raises():
    script = Script(
        httpx.Response(200, json={"success": True, "errors": [], "result": {"id": "z", "status": "active"}}),
        httpx.Response(200, json={"success": True, "errors": [], "result": {"id": "z", "status": "pending"}}),
        refusal(403, 10000, "Authentication error"),
        httpx.ConnectError("no route to host"),
    )
    cf = provider(script)
    up, pending, denied, down = (cf.health(ZONE) for _ in range(4))
    assert str(script.requests[0].url) == f"https://api.cloudflare.com/client/v4/zones/{ZONE.zone_id}"
    assert script.requests[0].method == "GET"
    assert up["ok"] is True and up["zone_status"] == "active" and up["latency_ms"] >= 0
    assert pending["ok"] is False and "pending" in pending["error"]
    assert denied["ok"] is False and "Authentication error" in denied["error"]
    assert down["ok"] is False and "unreachable" in down["error"]


def test_the_token_never_shows_in_reprs_or_errors():
    echoing = Script(
        refusal(400, 9109, f"Invalid access token {TOKEN}"),
        httpx.ConnectError(f"proxy refused Authorization: Bearer {TOKEN}"),
        refusal(403, 9109, f"bad token {TOKEN}"),
    )
    cf = provider(echoing)
    messages = [repr(cf), str(cf)]
    for _ in range(2):
        with pytest.raises(Exception) as raised:
            cf.purge(ZONE, batch("cloudflare", "audio", "tag", "t"))
        messages += [str(raised.value), repr(raised.value)]
    messages.append(str(cf.health(ZONE)))
    assert all(TOKEN not in m for m in messages), messages
    assert "***" in messages[2]
