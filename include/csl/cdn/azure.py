"""Azure Front Door (Standard/Premium) as a CDN provider, through Azure Resource Manager.

- Token: OAuth2 client credentials, ``POST {login_base}/{tenant}/oauth2/v2.0/token`` with scope
  ``https://management.azure.com/.default``; kept until five minutes before it expires.
- Purge: ``POST {api_base}/{endpoint}/purge?api-version=…`` with ``{"contentPaths": […],
  "domains": […]}`` (REST reference "AFD Endpoints - Purge Content"). Azure answers 202 and a
  long-running operation: ``Azure-AsyncOperation`` (or, failing that, ``Location``) is the URL to
  poll, kept as the batch's ``request_id``. Polling says ``InProgress`` until ``Succeeded``,
  ``Failed`` or ``Canceled``, with a ``Retry-After`` that ``poll`` hands back.
- The operation URL comes from a response: it is only ever followed (with our bearer token) when it
  is on ``api_base``'s own scheme and host.

Limits: "URLs in a single cache purge call: 100" (MicrosoftDocs/azure-docs, includes/
front-door-limits.md). Purges are Resource Manager writes, which Azure throttles per subscription
with a token bucket of 200 refilled at 10 a second ("Request limits and throttling", 2024 regional
throttling); purging takes a small share of that, 1 call/s with a burst of 10, so deployments and
other writers in the subscription keep theirs. A 429 is ``Throttled`` with ``Retry-After``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from csl.cdn.base import (
    CdnInputError,
    CdnRefused,
    CdnUnavailable,
    ClientOwner,
    CompletionState,
    ProviderLimits,
    PurgeBatch,
    PurgeResult,
    Zone,
)
from csl.cdn.http import (
    check,
    json_body,
    one_line,
    prefix_path,
    probe,
    require_batch,
    require_zone_id,
    retry_after_s,
    send,
    send_async,
)
from csl.config import ConfigError, Secret

__all__ = ["AzureFrontDoorProvider", "AzureOperation"]

log = logging.getLogger("csl.cdn")

SCOPE = "https://management.azure.com/.default"
PATHS_PER_CALL = 100
TOKEN_MARGIN_S = 300  # a cached token is renewed this long before it expires
_ENDPOINT = re.compile(r"subscriptions/[\w.()-]+/resourceGroups/[\w.()-]+/providers/Microsoft\.Cdn/"
                       r"profiles/[\w.()-]+/afdEndpoints/[\w.()-]+", re.IGNORECASE)
# Azure documents no error code for too many content paths: a 400 that talks of paths and a limit
_PATHS = re.compile(r"\b(content ?paths?|paths?|urls?)\b", re.IGNORECASE)
_LIMIT = re.compile(r"\b(too many|more than|exceed\w*|maximum|at most|limit)\b", re.IGNORECASE)
_STATES = {"succeeded": "done", "failed": "failed", "canceled": "failed", "cancelled": "failed"}


@dataclass(frozen=True)
class AzureOperation:
    """One poll of a purge's long-running operation: ``state`` (pending/done/failed), the wait
    Azure asked for before the next poll, and Azure's error when it failed or was canceled."""

    state: CompletionState
    retry_after_s: float | None = None
    error: str | None = None


def _error_of(body: Any) -> tuple[str | int | None, str | None]:
    """Resource Manager's ``{"error": {"code", "message"}}`` and the token endpoint's
    ``{"error": "invalid_client", "error_description": …}``."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        return error.get("code"), error.get("message")
    if isinstance(error, str):
        return error, body.get("error_description") or error
    return None, None


def _too_large(status: int, code: str | int | None, message: str) -> bool:
    return status == 400 and _PATHS.search(message) is not None and _LIMIT.search(message) is not None


class AzureFrontDoorProvider(ClientOwner):
    name = "azure"

    def __init__(self, *, tenant_id: str, client_id: str, client_secret: Secret, api_version: str = "2024-02-01",
                 api_base: str = "https://management.azure.com",
                 login_base: str = "https://login.microsoftonline.com",
                 transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0) -> None:
        for setting, value in (("tenant_id", tenant_id), ("client_id", client_id)):
            if not value or not re.fullmatch(r"[\w.-]+", value):
                raise ConfigError(setting, f"{value!r}: expected an Azure {setting.replace('_', ' ')}")
        if not isinstance(client_secret, Secret) or not client_secret:
            raise ConfigError("client_secret", "the service principal's secret (csl.config.Secret) is required")
        self.tenant_id, self.client_id, self.api_version = tenant_id, client_id, api_version
        self.api_base = api_base.rstrip("/")
        self.login_base = login_base.rstrip("/")
        self.limits = ProviderLimits(max_items={"url": PATHS_PER_CALL, "prefix": PATHS_PER_CALL, "everything": 1},
                                     rate_per_s=1.0, burst=10, asynchronous=True)
        self.last_retry_after_s: float | None = None  # the Retry-After of the latest poll
        self._client_secret = client_secret
        self._token: Secret | None = None
        self._token_until = 0.0
        self._token_lock = threading.Lock()
        self._timeout_s = timeout_s
        self._async_transport = async_transport
        self._client = httpx.Client(transport=transport, timeout=timeout_s)

    def __repr__(self) -> str:
        return (f"AzureFrontDoorProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
                f"api_base={self.api_base!r})")

    # -- the token -------------------------------------------------------------------------------

    @property
    def _secrets(self) -> tuple[Secret, ...]:
        return (self._client_secret,) + ((self._token,) if self._token else ())

    def _token_call(self) -> tuple[str, dict[str, str]]:
        return (f"{self.login_base}/{self.tenant_id}/oauth2/v2.0/token",
                {"grant_type": "client_credentials", "client_id": self.client_id,
                 "client_secret": self._client_secret.reveal(), "scope": SCOPE})

    def _keep_token(self, response: httpx.Response) -> Secret:
        check(self.name, "token request", response, error_of=_error_of, secrets=self._secrets)
        body = json_body(response)
        if not isinstance(body, dict) or not body.get("access_token"):
            raise CdnRefused(self.name, "token request: the answer has no access_token", status=response.status_code)
        try:
            lifetime = float(body.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0  # unreadable: use it for this call only
        self._token = Secret(str(body["access_token"]))
        self._token_until = time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S)
        return self._token

    def _valid_token(self) -> Secret | None:
        return self._token if self._token is not None and time.monotonic() < self._token_until else None

    def _auth(self) -> dict[str, str]:
        with self._token_lock:
            token = self._valid_token()
            if token is None:
                url, form = self._token_call()
                token = self._keep_token(send(self._client, self.name, "token request", "POST", url, data=form,
                                              secrets=self._secrets))
        return {"Authorization": f"Bearer {token.reveal()}"}

    async def _auth_async(self, client: httpx.AsyncClient) -> dict[str, str]:
        token = self._valid_token()
        if token is None:
            url, form = self._token_call()
            token = self._keep_token(await send_async(client, self.name, "token request", "POST", url, data=form,
                                                      secrets=self._secrets))
        return {"Authorization": f"Bearer {token.reveal()}"}

    def _arm(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A Resource Manager call with the bearer token; a 401 (the cached token revoked or expired
        early) gets one fresh token and one more try."""
        response = send(self._client, self.name, what, method, url, headers=self._auth(), secrets=self._secrets,
                        **kwargs)
        if response.status_code == 401:
            self._token_until = 0.0
            response = send(self._client, self.name, what, method, url, headers=self._auth(),
                            secrets=self._secrets, **kwargs)
        return response

    async def _arm_async(self, client: httpx.AsyncClient, what: str, method: str, url: str) -> httpx.Response:
        """``_arm`` on an ``httpx.AsyncClient``."""
        response = await send_async(client, self.name, what, method, url, headers=await self._auth_async(client),
                                    secrets=self._secrets)
        if response.status_code == 401:
            self._token_until = 0.0
            response = await send_async(client, self.name, what, method, url,
                                        headers=await self._auth_async(client), secrets=self._secrets)
        return response

    # -- purging -------------------------------------------------------------------------------

    def _endpoint_url(self, zone: Zone) -> str:
        endpoint = require_zone_id(self.name, zone).strip("/")
        if not _ENDPOINT.fullmatch(endpoint) or any(s in (".", "..") for s in endpoint.split("/")):
            raise CdnInputError(f"CDN zone {zone.name!r}: zone_id {endpoint[:200]!r} is not an Azure Front Door "
                                "endpoint path (subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Cdn/"
                                "profiles/<profile>/afdEndpoints/<endpoint>)")
        return f"{self.api_base}/{endpoint}"

    def purge_body(self, zone: Zone, batch: PurgeBatch) -> dict[str, Any]:
        """The JSON Azure takes for this batch: URLs as their paths, prefixes as ``/path/*``
        (Front Door's wildcard is a whole directory), everything as the zone's base path ``/*``."""
        if batch.kind == "url":
            paths = [urlsplit(url).path or "/" for url in batch.items]
        elif batch.kind == "prefix":
            paths = [_directory(prefix_path(prefix)) for prefix in batch.items]
        else:  # everything of this zone: its base path on its domains
            paths = [_directory(urlsplit(zone.base_url).path)]
        domains = list(zone.options.get("domains") or [zone.host])
        return {"contentPaths": paths, "domains": domains}

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        url = self._endpoint_url(zone)
        require_batch(self.name, self.limits, zone, batch)
        what = f"purge of batch {batch.batch_id} in zone {zone.name!r}"
        response = self._arm(what, "POST", f"{url}/purge", params={"api-version": self.api_version},
                             json=self.purge_body(zone, batch))
        check(self.name, what, response, error_of=_error_of, too_large=_too_large, secrets=self._secrets)
        if response.status_code == 200:  # finished within the call
            return PurgeResult(batch_id=batch.batch_id, status="done")
        operation = response.headers.get("azure-asyncoperation") or response.headers.get("location")
        if not operation:
            raise CdnUnavailable(self.name, f"{what}: HTTP {response.status_code} without an operation URL to follow")
        if not self._own_url(operation):
            raise CdnRefused(self.name, f"{what}: the operation URL {one_line(operation, self._secrets)!r} is not "
                                        f"on {self.api_base}", status=response.status_code)
        return PurgeResult(batch_id=batch.batch_id, status="pending", request_id=operation,
                           detail={"retry_after_s": retry_after_s(response)})

    # -- following a purge ------------------------------------------------------------------------

    def _own_url(self, url: str) -> bool:
        theirs, ours = urlsplit(url), urlsplit(self.api_base)
        return (theirs.scheme, theirs.netloc.lower()) == (ours.scheme, ours.netloc.lower()) and not theirs.username

    def _operation_url(self, zone: Zone, request_id: str) -> str:
        if not self._own_url(request_id):
            raise CdnInputError(f"CDN provider 'azure', zone {zone.name!r}: refusing to poll {request_id[:200]!r}, "
                                f"which is not on {self.api_base}")
        return request_id

    def _operation(self, zone: Zone, response: httpx.Response) -> AzureOperation:
        what = f"poll of a purge in zone {zone.name!r}"
        check(self.name, what, response, error_of=_error_of, secrets=self._secrets)
        wait = retry_after_s(response)
        self.last_retry_after_s = wait
        body = json_body(response)
        status = body.get("status") if isinstance(body, dict) else None
        if status is None:  # a Location URL: 202 while running, 200/204 once done
            return AzureOperation("pending" if response.status_code == 202 else "done", wait)
        state = _STATES.get(str(status).lower(), "pending")
        if state != "failed":
            return AzureOperation(state, wait)
        code, message = _error_of(body)
        error = one_line(f"{status}: " + (f"{code}: " if code else "") + (message or "no error given"), self._secrets)
        log.warning("Azure Front Door purge in zone %s ended %s", zone.name, error)
        return AzureOperation("failed", wait, error)

    def poll(self, zone: Zone, request_id: str) -> AzureOperation:
        """Where the purge behind ``request_id`` stands, with Azure's ``Retry-After`` and error."""
        url = self._operation_url(zone, request_id)
        return self._operation(zone, self._arm(f"poll of a purge in zone {zone.name!r}", "GET", url))

    async def poll_async(self, zone: Zone, request_id: str) -> AzureOperation:
        """``poll`` on an ``httpx.AsyncClient``: nothing in it blocks the event loop."""
        url = self._operation_url(zone, request_id)
        async with httpx.AsyncClient(transport=self._async_transport, timeout=self._timeout_s) as client:
            response = await self._arm_async(client, f"poll of a purge in zone {zone.name!r}", "GET", url)
        return self._operation(zone, response)

    def completion(self, zone: Zone, request_id: str) -> CompletionState:
        return self.poll(zone, request_id).state

    async def completion_async(self, zone: Zone, request_id: str) -> CompletionState:
        return (await self.poll_async(zone, request_id)).state

    def health(self, zone: Zone) -> dict[str, Any]:
        """The endpoint resource: a token is granted, the endpoint is provisioned and enabled."""

        def call() -> dict[str, Any]:
            url = self._endpoint_url(zone)
            what = f"health of zone {zone.name!r}"
            response = self._arm(what, "GET", url, params={"api-version": self.api_version})
            body = json_body(check(self.name, what, response, error_of=_error_of, secrets=self._secrets)) or {}
            properties = body.get("properties") or {}
            provisioned, enabled = properties.get("provisioningState"), properties.get("enabledState")
            answer: dict[str, Any] = {"ok": provisioned == "Succeeded" and enabled == "Enabled",
                                      "provisioning_state": provisioned, "enabled_state": enabled}
            if not answer["ok"]:
                answer["error"] = f"endpoint is {provisioned!r} / {enabled!r}, not 'Succeeded' / 'Enabled'"
            return answer

        return probe(self.name, zone, call)


def _directory(path: str) -> str:
    """``/audio/album-7`` → ``/audio/album-7/*``; the root → ``/*``."""
    return path.rstrip("*").rstrip("/") + "/*"
