"""Fastly as a CDN provider: surrogate-key, single-URL and purge-all through the Fastly API.

A purge is done when Fastly answers, so ``completion`` is always ``done``. The calls (Fastly API
reference, "Purging"; fastly/fastly-js docs/PurgeApi.md):

- tags: ``POST /service/{service_id}/purge`` with ``{"surrogate_keys": [...]}``, "up to 256
  surrogate keys can be purged in one batch request";
- one URL per call: ``POST /purge/{cached_url}``, the cached URL without its scheme (the form
  Fastly moved to in 2022, "Replace wildcard URL purge endpoint with new POST endpoint");
- everything: ``POST /service/{service_id}/purge_all`` (never soft: Fastly has no soft purge-all);
- prefixes: Fastly has no documented prefix or wildcard purge, so this provider has none.

``soft_purge`` adds ``Fastly-Soft-Purge: 1`` (the objects are marked stale, not dropped) to key and
URL purges.

Rate: docs.fastly.com/api "Rate limiting": 1,000 non-read requests per hour, but "surrogate key
and URL purge requests are also not limited, but purge all requests count against the per-hour
rate limit". With no published purge ceiling, the bucket here is 20 calls/s with a burst of 100 —
72,000 calls an hour, well clear of anything Fastly has said it would throttle — and a 429 is
``Throttled`` with its ``Retry-After`` all the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from csl.cdn.base import CdnInputError, ClientOwner, CompletesOnReply, ProviderLimits, PurgeBatch, PurgeResult, Zone
from csl.cdn.http import check, json_body, probe, require_batch, require_zone_id, send
from csl.config import ConfigError, Secret

__all__ = ["FastlyProvider"]

KEYS_PER_CALL = 256


def _error_of(body: Any) -> tuple[str | int | None, str | None]:
    """Fastly's errors: ``{"msg": …, "detail": …}``."""
    if not isinstance(body, dict) or not (body.get("msg") or body.get("detail")):
        return None, None
    parts = [str(body[k]) for k in ("msg", "detail") if body.get(k)]
    return None, ": ".join(parts)


class FastlyProvider(ClientOwner, CompletesOnReply):
    name = "fastly"

    def __init__(self, *, api_token: Secret, soft_purge: bool = False, api_base: str = "https://api.fastly.com",
                 transport: httpx.BaseTransport | None = None, timeout_s: float = 10.0) -> None:
        if not isinstance(api_token, Secret) or not api_token:
            raise ConfigError("api_token", "a Fastly API token (csl.config.Secret) is required")
        self.soft_purge = soft_purge
        self.api_base = api_base.rstrip("/")
        self.limits = ProviderLimits(max_items={"url": 1, "tag": KEYS_PER_CALL, "everything": 1},
                                     rate_per_s=20.0, burst=100)
        self._secrets = (api_token,)
        self._client = httpx.Client(base_url=self.api_base + "/", transport=transport, timeout=timeout_s,
                                    headers={"Fastly-Key": api_token.reveal(), "Accept": "application/json"})

    def __repr__(self) -> str:
        return f"FastlyProvider(soft_purge={self.soft_purge!r}, api_base={self.api_base!r})"

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        response = send(self._client, self.name, what, method, path, secrets=self._secrets, **kwargs)
        check(self.name, what, response, error_of=_error_of, secrets=self._secrets)
        return json_body(response)

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        service = quote(require_zone_id(self.name, zone), safe="")
        require_batch(self.name, self.limits, zone, batch)
        what = f"purge of batch {batch.batch_id} in zone {zone.name!r}"
        soft = {"Fastly-Soft-Purge": "1"} if self.soft_purge else {}
        if batch.kind == "tag":
            answer = self._call(what, "POST", f"service/{service}/purge", headers=soft,
                                json={"surrogate_keys": list(batch.items)})
            ids = answer if isinstance(answer, dict) else {}
            return PurgeResult(batch_id=batch.batch_id, status="done", detail={"purge_ids": ids})
        if batch.kind == "url":
            answer = self._call(what, "POST", f"purge/{_cached_url(zone, batch.items[0])}", headers=soft)
        else:  # everything: the whole service (a service per zone keeps this to one content type)
            answer = self._call(what, "POST", f"service/{service}/purge_all")
        purge_id = answer.get("id") if isinstance(answer, dict) else None
        return PurgeResult(batch_id=batch.batch_id, status="done", request_id=purge_id)

    def health(self, zone: Zone) -> dict[str, Any]:
        """``GET /service/{id}``: the token works and the service exists (reads are not rate limited)."""

        def call() -> dict[str, Any]:
            service = quote(require_zone_id(self.name, zone), safe="")
            answer = self._call(f"health of zone {zone.name!r}", "GET", f"service/{service}")
            return {"ok": True, "service_name": answer.get("name") if isinstance(answer, dict) else None}

        return probe(self.name, zone, call)


def _cached_url(zone: Zone, url: str) -> str:
    """``POST /purge/{cached_url}``'s path: host and path as the URL has them, no scheme; a query
    string stays part of the cached URL (``?`` sent as ``%3F`` so it is not the API call's own).

    The URL lands in the API call's own path, so it must be a URL of the zone's host with no dot
    segments: ``…/../service/<id>/purge_all`` would otherwise reach another endpoint."""
    parts = urlsplit(url)
    dots = {unquote(segment) for segment in parts.path.split("/")} & {".", ".."}
    if parts.netloc.lower() != zone.host.lower() or dots or "\\" in unquote(parts.path):
        raise CdnInputError(f"CDN provider 'fastly': URL {url[:200]!r} is not a plain URL of zone "
                            f"{zone.name!r} (host {zone.host!r})")
    return parts.netloc + (parts.path or "/") + (f"%3F{parts.query}" if parts.query else "")
