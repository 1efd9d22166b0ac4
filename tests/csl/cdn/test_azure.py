"""AzureFrontDoorProvider at the HTTP layer: the client-credentials token, the purge call, the
long-running operation it starts, and the errors of Resource Manager and of the token endpoint."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import httpx
import pytest

from csl.cdn.azure import AzureFrontDoorProvider
from csl.cdn.base import (
    BatchTooLarge,
    CdnInputError,
    CdnProvider,
    CdnRefused,
    CdnUnavailable,
    Throttled,
    Zone,
)
from csl.config import Secret

from .fake_http import Script, batch, body_of

SECRET = "azure-secret-Qm9vYmFyYmF6"
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access"
TENANT, CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "00000000-1111-2222-3333-444444444444"
ENDPOINT = ("subscriptions/subid/resourceGroups/RG/providers/Microsoft.Cdn/profiles/profile1/"
            "afdEndpoints/endpoint1")
ZONE = Zone(name="audio", provider="azure", base_url="https://cdn.example.com/audio", zone_id=ENDPOINT)
OPERATION = ("https://management.azure.com/subscriptions/subid/providers/Microsoft.Cdn/locations/eastus/"
             "operationResults/0f1a2b3c?api-version=2024-02-01")
LOCATION = ("https://management.azure.com/subscriptions/subid/providers/Microsoft.Cdn/locations/eastus/"
            "operationResults/0f1a2b3c?api-version=2024-02-01&monitor=true")


def token(expires_in: int = 3599) -> httpx.Response:
    return httpx.Response(200, json={"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in,
                                     "access_token": ACCESS_TOKEN})


def accepted(**headers: str) -> httpx.Response:
    return httpx.Response(202, headers=headers or {"Azure-AsyncOperation": OPERATION, "Location": LOCATION})


def provider(script: Script, **kwargs) -> AzureFrontDoorProvider:
    return AzureFrontDoorProvider(tenant_id=TENANT, client_id=CLIENT, client_secret=Secret(SECRET),
                                  transport=script.transport(), async_transport=script.async_transport(), **kwargs)


def test_purge_gets_a_token_then_posts_the_paths_and_follows_the_async_operation():
    script = Script(token(), accepted())
    with provider(script) as afd:
        assert isinstance(afd, CdnProvider)
        result = afd.purge(ZONE, batch("azure", "audio", "url", "https://cdn.example.com/audio/a.mp3",
                                       "https://cdn.example.com/audio/b%20c.mp3"))
    login, purge = script.requests
    assert (login.method, str(login.url)) == ("POST", f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    assert parse_qs(login.content.decode()) == {"grant_type": ["client_credentials"], "client_id": [CLIENT],
                                               "client_secret": [SECRET],
                                               "scope": ["https://management.azure.com/.default"]}
    assert purge.method == "POST"
    assert str(purge.url) == f"https://management.azure.com/{ENDPOINT}/purge?api-version=2024-02-01"
    assert purge.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert body_of(purge) == {"contentPaths": ["/audio/a.mp3", "/audio/b%20c.mp3"], "domains": ["cdn.example.com"]}
    assert (result.status, result.request_id) == ("pending", OPERATION)


def test_location_is_the_operation_when_there_is_no_azure_asyncoperation():
    script = Script(token(), accepted(Location=LOCATION))
    result = provider(script).purge(ZONE, batch("azure", "audio", "everything"))
    assert result.request_id == LOCATION


def test_prefixes_are_directory_wildcards_everything_is_the_zone_base_path_on_its_domains():
    zone = Zone(name="audio", provider="azure", base_url="https://cdn.example.com/audio", zone_id=ENDPOINT,
                options={"domains": ["cdn.example.com", "cdn-eu.example.com"]})
    script = Script(token(), accepted(), accepted())
    afd = provider(script)
    afd.purge(zone, batch("azure", "audio", "prefix", "/audio/album-7/", "cdn.example.com/audio/album-8",
                          "https://cdn.example.com/audio/album-9/*"))
    afd.purge(zone, batch("azure", "audio", "everything"))
    assert body_of(script.requests[1]) == {
        "contentPaths": ["/audio/album-7/*", "/audio/album-8/*", "/audio/album-9/*"],
        "domains": ["cdn.example.com", "cdn-eu.example.com"]}
    assert body_of(script.requests[2])["contentPaths"] == ["/audio/*"]


def test_one_token_serves_several_calls_until_shortly_before_it_expires():
    script = Script(token(), accepted(), accepted(), httpx.Response(200, json={"status": "InProgress"}))
    afd = provider(script)
    afd.purge(ZONE, batch("azure", "audio", "url", "https://cdn.example.com/audio/a.mp3"))
    afd.purge(ZONE, batch("azure", "audio", "url", "https://cdn.example.com/audio/b.mp3"))
    afd.completion(ZONE, OPERATION)
    assert [r.url.host for r in script.requests].count("login.microsoftonline.com") == 1
    # a token that expires within the renewal margin is fetched again for the next call
    short = Script(token(expires_in=120), accepted(), token(expires_in=120), accepted())
    afd = provider(short)
    for _ in range(2):
        afd.purge(ZONE, batch("azure", "audio", "everything"))
    assert [r.url.host for r in short.requests].count("login.microsoftonline.com") == 2


def test_a_revoked_token_is_replaced_once_then_a_401_is_a_refusal():
    expired = httpx.Response(401, json={"error": {"code": "ExpiredAuthenticationToken",
                                                  "message": "The access token expiry UTC time is earlier"}})
    script = Script(token(), expired, token(), accepted(), expired, token(), expired)
    afd = provider(script)
    assert afd.purge(ZONE, batch("azure", "audio", "everything")).status == "pending"
    with pytest.raises(CdnRefused, match="ExpiredAuthenticationToken") as refused:
        afd.purge(ZONE, batch("azure", "audio", "everything"))
    assert refused.value.status == 401
    assert [r.url.host for r in script.requests].count("login.microsoftonline.com") == 3


@pytest.mark.parametrize(("answer", "state"), [
    (httpx.Response(200, json={"status": "InProgress"}, headers={"Retry-After": "10"}), "pending"),
    (httpx.Response(200, json={"status": "Succeeded"}), "done"),
    (httpx.Response(200, json={"status": "Failed", "error": {"code": "PurgeFailed", "message": "edge timed out"}}),
     "failed"),
    (httpx.Response(200, json={"status": "Canceled"}), "failed"),
    (httpx.Response(202, headers={"Retry-After": "5"}), "pending"),  # polling a Location URL
    (httpx.Response(204), "done"),
])
def test_completion_follows_the_operation(answer, state):
    script = Script(token(), answer)
    afd = provider(script)
    assert afd.completion(ZONE, OPERATION) == state
    poll = script.requests[1]
    assert (poll.method, str(poll.url)) == ("GET", OPERATION)
    assert poll.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


def test_poll_hands_back_retry_after_and_the_error_of_a_failed_purge():
    script = Script(token(), httpx.Response(200, json={"status": "InProgress"}, headers={"Retry-After": "17"}),
                    httpx.Response(200, json={"status": "Failed",
                                              "error": {"code": "PurgeFailed", "message": "edge timed out"}}))
    afd = provider(script)
    running = afd.poll(ZONE, OPERATION)
    assert (running.state, running.retry_after_s, afd.last_retry_after_s) == ("pending", 17, 17)
    failed = afd.poll(ZONE, OPERATION)
    assert failed.state == "failed" and failed.error == "Failed: PurgeFailed: edge timed out"


def test_completion_async_uses_the_async_transport_only():
    script = Script(token(), httpx.Response(200, json={"status": "InProgress"}),
                    httpx.Response(200, json={"status": "Succeeded"}))
    afd = AzureFrontDoorProvider(tenant_id=TENANT, client_id=CLIENT, client_secret=Secret(SECRET),
                                 transport=Script().transport(),  # a sync call would fail the test
                                 async_transport=script.async_transport())

    async def follow() -> list[str]:
        return [await afd.completion_async(ZONE, OPERATION), await afd.completion_async(ZONE, OPERATION)]

    assert asyncio.run(follow()) == ["pending", "done"]
    assert [r.method for r in script.requests] == ["POST", "GET", "GET"]  # one token, two polls


def test_an_operation_url_off_the_management_host_is_never_followed():
    script = Script(token(), accepted(**{"Azure-AsyncOperation": "https://evil.example.net/steal"}))
    afd = provider(script)
    with pytest.raises(CdnRefused, match="not on https://management.azure.com"):
        afd.purge(ZONE, batch("azure", "audio", "everything"))
    for hostile in ("https://evil.example.net/op", "http://management.azure.com/op",
                    "https://management.azure.com.evil.net/op", "https://user@management.azure.com/op"):
        with pytest.raises(CdnInputError, match="refusing to poll"):
            afd.completion(ZONE, hostile)
        with pytest.raises(CdnInputError, match="refusing to poll"):
            asyncio.run(afd.completion_async(ZONE, hostile))
    assert len(script.requests) == 2  # the token and the purge: nothing went to another host


def test_a_zone_id_that_is_not_an_endpoint_path_or_a_kind_azure_lacks_is_refused_before_any_call():
    script = Script()
    afd = provider(script)
    bad = Zone(name="audio", provider="azure", base_url="https://cdn.example.com/audio",
               zone_id="subscriptions/subid/resourceGroups/RG/../../providers/x")
    with pytest.raises(CdnInputError, match="not an Azure Front Door endpoint path"):
        afd.purge(bad, batch("azure", "audio", "everything"))
    with pytest.raises(CdnInputError, match=r"'azure' cannot purge by 'tag'"):
        afd.purge(ZONE, batch("azure", "audio", "tag", "t"))
    with pytest.raises(BatchTooLarge):
        afd.purge(ZONE, batch("azure", "audio", "url", *[f"https://cdn.example.com/audio/{i}" for i in range(101)]))
    assert script.requests == []
    assert afd.limits.asynchronous and afd.limits.max_items["url"] == 100


def test_resource_manager_errors_map_to_the_cdn_errors():
    script = Script(
        token(),
        httpx.Response(429, headers={"Retry-After": "21"},
                       json={"error": {"code": "TooManyRequests", "message": "Throttled"}}),
        httpx.Response(403, json={"error": {"code": "AuthorizationFailed",
                                            "message": f"The client '{CLIENT}' does not have authorization"}}),
        httpx.Response(400, json={"error": {"code": "BadRequest",
                                            "message": "The number of content paths exceeds the maximum of 100."}}),
        httpx.Response(500, json={"error": {"code": "InternalServerError", "message": "oops"}}),
        httpx.ReadTimeout("timed out"),
    )
    afd = provider(script)
    purge = batch("azure", "audio", "everything")
    with pytest.raises(Throttled) as throttled:
        afd.purge(ZONE, purge)
    assert throttled.value.retry_after_s == 21
    with pytest.raises(CdnRefused, match="AuthorizationFailed") as refused:
        afd.purge(ZONE, purge)
    assert (refused.value.status, refused.value.code) == (403, "AuthorizationFailed")
    with pytest.raises(BatchTooLarge):
        afd.purge(ZONE, purge)
    for _ in range(2):
        with pytest.raises(CdnUnavailable):
            afd.purge(ZONE, purge)


def test_a_refused_token_names_the_azure_ad_error_and_never_the_secret():
    script = Script(httpx.Response(401, json={
        "error": "invalid_client",
        "error_description": f"AADSTS7000215: Invalid client secret provided. Got '{SECRET}'."}))
    afd = provider(script)
    with pytest.raises(CdnRefused) as refused:
        afd.purge(ZONE, batch("azure", "audio", "everything"))
    message = str(refused.value)
    assert "token request refused: HTTP 401 code invalid_client" in message and "AADSTS7000215" in message
    assert SECRET not in message and SECRET not in repr(afd)


def test_health_reads_the_endpoint_and_never_raises():
    script = Script(
        token(),
        httpx.Response(200, json={"name": "endpoint1", "properties": {"provisioningState": "Succeeded",
                                                                      "enabledState": "Enabled"}}),
        httpx.Response(200, json={"name": "endpoint1", "properties": {"provisioningState": "Succeeded",
                                                                      "enabledState": "Disabled"}}),
        httpx.Response(404, json={"error": {"code": "NotFound", "message": "endpoint1 not found"}}),
        httpx.ConnectError("refused"),
    )
    afd = provider(script)
    up, disabled, missing, down = (afd.health(ZONE) for _ in range(4))
    assert str(script.requests[1].url) == f"https://management.azure.com/{ENDPOINT}?api-version=2024-02-01"
    assert up["ok"] is True and up["latency_ms"] >= 0
    assert disabled["ok"] is False and "Disabled" in disabled["error"]
    assert missing["ok"] is False and "NotFound" in missing["error"]
    assert down["ok"] is False and "unreachable" in down["error"]
    assert all(ACCESS_TOKEN not in str(h) and SECRET not in str(h) for h in (up, disabled, missing, down))
