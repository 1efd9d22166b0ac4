"""Cloudflare as a CDN provider: ``POST {api_base}/zones/{zone_id}/purge_cache`` with an API token.

A purge is done when Cloudflare answers (Instant Purge), so ``completion`` is always ``done``.

Limits (Cloudflare's docs as found on 2026-12-06; they disagree with each other, so each number
says where it comes from):

- Purge call rate, a token bucket per account and plan — developers.cloudflare.com/cache/how-to/
  purge-cache ("Availability and limits"): Free 5 requests/minute bucket 25, Pro 5/s bucket 25,
  Business 10/s bucket 50, Enterprise 50/s bucket 500; single-file purges are also metered at
  800 URLs/s (Free), 1,500 (Pro, Business), 3,000 (Enterprise) → ``items_per_s``.
- URLs per call: that page's table says 100 (500 Enterprise), but cloudflare/cloudflare-docs
  issue #21338 (2025-04) reports the purge-by-URL limit is still 30, and PR #13619 gives 30 for
  Free/Pro/Business and 500 for Enterprise. Default 30 (works on every plan);
  ``max_urls_per_call`` raises it where the account is known to take more.
- Tags, hosts, prefixes per call: 100 on every plan — cloudflare/cloudflare-docs PR #32906
  (2026-08: "The API default was raised to 100", the older how-to pages said 30).
- Too many calls anyway (the API's global 1,200 requests / 5 minutes): 429 → ``Throttled``.

Refusals of a batch's size: Cloudflare documents no error code for them; issue #21338 quotes the
message ("cannot provide more than 100 items"), so a 400 (or a 200 with ``success: false``) whose
message says "more than N items/files/tags/…" — or any 413 — is ``BatchTooLarge``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from csl.cdn.base import ClientOwner, CompletesOnReply, ProviderLimits, PurgeBatch, PurgeResult, Zone
from csl.cdn.http import check, json_body, probe, require_batch, require_zone_id, send
from csl.config import ConfigError, Secret

__all__ = ["CloudflareProvider"]

# plan: (purge calls per second, bucket size, single-file URLs purged per second)
PLAN_RATES: dict[str, tuple[float, int, float]] = {
    "free": (5 / 60, 25, 800),
    "pro": (5.0, 25, 1500),
    "business": (10.0, 50, 1500),
    "enterprise": (50.0, 500, 3000),
}
KEYS_PER_CALL = 100  # tags, hosts or prefixes in one call, every plan
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TOO_MANY = re.compile(r"\b(too many|more than \d+|at most \d+|maximum of \d+|up to \d+)\b[^.;]{0,40}?"
                       r"\b(files|urls|tags|prefixes|hosts|hostnames|items)\b", re.IGNORECASE)


def _error_of(body: Any) -> tuple[str | int | None, str | None]:
    """Cloudflare's envelope: ``{"success": false, "errors": [{"code": …, "message": …}], …}``."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return None, None
    found = [e for e in errors if isinstance(e, dict)]
    code = found[0].get("code") if found else None
    return code, "; ".join(str(e.get("message", "")) for e in found) or None


def _succeeded(body: Any) -> bool:
    return isinstance(body, dict) and body.get("success") is True


def _too_large(status: int, code: str | int | None, message: str) -> bool:
    return status in (200, 400) and _TOO_MANY.search(message) is not None


class CloudflareProvider(ClientOwner, CompletesOnReply):
    name = "cloudflare"

    def __init__(self, *, api_token: Secret, plan: str = "free", max_urls_per_call: int = 30,
                 api_base: str = "https://api.cloudflare.com/client/v4",
                 transport: httpx.BaseTransport | None = None, timeout_s: float = 10.0) -> None:
        if not isinstance(api_token, Secret) or not api_token:
            raise ConfigError("api_token", "a Cloudflare API token (csl.config.Secret) is required")
        if plan not in PLAN_RATES:
            raise ConfigError("plan", f"unknown Cloudflare plan {plan!r}; expected one of {', '.join(PLAN_RATES)}")
        if not isinstance(max_urls_per_call, int) or not 1 <= max_urls_per_call <= 500:
            raise ConfigError("max_urls_per_call", f"{max_urls_per_call!r}: expected a whole number from 1 to 500")
        rate, burst, urls_per_s = PLAN_RATES[plan]
        self.plan = plan
        self.api_base = api_base.rstrip("/")
        self.limits = ProviderLimits(
            max_items={"url": max_urls_per_call, "tag": KEYS_PER_CALL, "prefix": KEYS_PER_CALL, "everything": 1},
            rate_per_s=rate, burst=burst, items_per_s=urls_per_s)
        self._secrets = (api_token,)
        self._client = httpx.Client(base_url=self.api_base + "/", transport=transport, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_token.reveal()}"})

    def __repr__(self) -> str:
        return f"CloudflareProvider(plan={self.plan!r}, api_base={self.api_base!r})"

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        response = send(self._client, self.name, what, method, path, secrets=self._secrets, **kwargs)
        check(self.name, what, response, error_of=_error_of, too_large=_too_large, succeeded=_succeeded,
              secrets=self._secrets)
        return json_body(response)

    def purge_body(self, zone: Zone, batch: PurgeBatch) -> dict[str, Any]:
        """The JSON Cloudflare takes for this batch (URLs as ``files``, with the zone's
        ``cache_key_headers`` when its cache key includes headers; prefixes as host/path;
        everything as this zone's prefix or host)."""
        items = list(batch.items)
        if batch.kind == "url":
            headers = zone.options.get("cache_key_headers")
            return {"files": [{"url": url, "headers": dict(headers)} for url in items] if headers else items}
        if batch.kind == "tag":
            return {"tags": items}
        if batch.kind == "prefix":
            # Cloudflare's form is host/path: a scheme is dropped, a bare path gets the zone's host
            return {"prefixes": [zone.host + prefix if prefix.startswith("/") else _SCHEME.sub("", prefix, count=1)
                                 for prefix in items]}
        # everything of *this* zone: a Cloudflare zone usually serves several of ours (audio, images,
        # static), so purge its base URL's prefix, or its host; the whole Cloudflare zone only when
        # the zone says it is alone there (options: purge_everything)
        if zone.options.get("purge_everything"):
            return {"purge_everything": True}
        path = urlsplit(zone.base_url).path.rstrip("/")
        return {"prefixes": [zone.host + path]} if path else {"hosts": [zone.host]}

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        zone_id = require_zone_id(self.name, zone)
        require_batch(self.name, self.limits, zone, batch)
        body = self._call(f"purge of batch {batch.batch_id} in zone {zone.name!r}", "POST",
                          f"zones/{quote(zone_id, safe='')}/purge_cache", json=self.purge_body(zone, batch))
        result = body.get("result") if isinstance(body.get("result"), dict) else {}
        return PurgeResult(batch_id=batch.batch_id, status="done", request_id=result.get("id"))

    def health(self, zone: Zone) -> dict[str, Any]:
        """``GET /zones/{id}``: the token works, the zone is reachable and its status is active."""

        def call() -> dict[str, Any]:
            zone_id = require_zone_id(self.name, zone)
            body = self._call(f"health of zone {zone.name!r}", "GET", f"zones/{quote(zone_id, safe='')}")
            status = (body.get("result") or {}).get("status")
            answer: dict[str, Any] = {"ok": status == "active", "zone_status": status}
            if status != "active":
                answer["error"] = f"Cloudflare zone status is {status!r}, not 'active'"
            return answer

        return probe(self.name, zone, call)
