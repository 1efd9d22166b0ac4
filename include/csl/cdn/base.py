"""The CDN's shared vocabulary: zones, purge batches and results, provider limits, the errors,
and the interface every provider (Cloudflare, CloudFront, Azure Front Door, Fastly, the local
Varnish edge) implements.

A purge goes: requests (URLs, tags, prefixes) → ``csl.cdn.purge`` dedupes them, groups them by
zone, cuts them into ``PurgeBatch``es at the provider's ``ProviderLimits`` and sends each with
``CdnProvider.purge`` under a token bucket → a ``PurgeResult`` per batch (``done`` on reply, or
``pending`` with a ``request_id`` for providers that complete later, polled with
``CdnProvider.completion`` / ``completion_async``).

A provider raises ``BatchTooLarge`` when the API refuses a batch's size (the sender halves it),
``Throttled`` on 429 / throttling (the sender waits ``retry_after_s`` and tries again),
``CdnRefused`` when the API refuses for good (bad credentials, bad request), ``CdnUnavailable``
when it cannot be reached or answers 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from csl.errors import BadInput, EdgeError, ProblemFound

__all__ = [
    "PURGE_KINDS",
    "ZONES",
    "BatchTooLarge",
    "CdnInputError",
    "CdnProvider",
    "CdnRefused",
    "CdnUnavailable",
    "ClientOwner",
    "CompletesOnReply",
    "CompletionState",
    "ProviderLimits",
    "PurgeBatch",
    "PurgeResult",
    "Throttled",
    "Zone",
    "batch_id_for",
    "completion_in_thread",
]

ZONES = ("audio", "images", "static")
# url: absolute URLs under the zone's base URL; tag: cache tags / surrogate keys / xkeys;
# prefix: "host/path" (no scheme, Cloudflare's form) or a path prefix for providers keyed on paths;
# everything: the whole zone (items empty), only where the provider allows it.
PURGE_KINDS = ("url", "tag", "prefix", "everything")
# Terminal and non-terminal states a purge batch can be in.
CompletionState = str  # "pending" | "done" | "failed"


class CdnInputError(BadInput):
    """A purge or URL request refused before any call (a URL outside every zone, an unknown zone,
    an invalid transform option, a purge kind the provider does not have)."""


class CdnRefused(ProblemFound):
    """The provider refused a request for good (credentials, a malformed request): retrying the
    same request cannot help. The message names the provider, the HTTP status and its error."""

    def __init__(self, provider: str, message: str, *, status: int | None = None,
                 code: str | int | None = None) -> None:
        self.provider = provider
        self.status = status
        self.code = code
        super().__init__(f"CDN provider {provider!r}: {message}")


class BatchTooLarge(CdnRefused):
    """The provider refused the batch because of its size: send it again in halves."""


class Throttled(EdgeError):
    """429, a throttling error or too many purges in progress: wait ``retry_after_s`` (the
    provider's ``Retry-After`` when it gave one) and send the same batch again."""

    def __init__(self, provider: str, message: str, *, retry_after_s: float | None = None) -> None:
        self.provider = provider
        self.retry_after_s = retry_after_s
        super().__init__(f"CDN provider {provider!r}: {message}")


class CdnUnavailable(EdgeError):
    """The provider could not be reached, timed out or answered 5xx (transient)."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"CDN provider {provider!r}: {message}")


@dataclass(frozen=True)
class Zone:
    """One CDN zone: which provider serves a content type, under which base URL.

    ``zone_id`` is the provider's own identifier: Cloudflare's zone id, CloudFront's distribution
    id, Azure Front Door's endpoint path ``subscriptions/<sub>/resourceGroups/<rg>/providers/
    Microsoft.Cdn/profiles/<profile>/afdEndpoints/<endpoint>``, Fastly's service id; ``None`` for
    the local Varnish edge. ``base_url`` is where the zone's objects are served
    (``https://cdn.example.com/audio``): a URL belongs to the zone whose base URL it starts with.
    """

    name: str
    provider: str
    base_url: str
    zone_id: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.base_url).netloc


@dataclass(frozen=True)
class ProviderLimits:
    """What one provider accepts: items per call for each purge kind it has (a kind missing here is
    one the provider cannot purge), the call rate as a token bucket (``rate_per_s`` tokens added
    per second up to ``burst``), and whether a purge completes on reply or later."""

    max_items: Mapping[str, int]
    rate_per_s: float
    burst: int
    asynchronous: bool = False
    # Items purged per second where the provider meters items as well as calls (Cloudflare's URL
    # purges); None when only calls are metered.
    items_per_s: float | None = None

    def supports(self, kind: str) -> bool:
        return kind in self.max_items


def batch_id_for(run_key: str, provider: str, zone: str, kind: str, items: Sequence[str]) -> str:
    """The same batch always has the same id (so CloudFront's CallerReference repeats on a retry and
    a rerun recognises a batch it already confirmed): a hash of the run, the target and the items."""
    blob = json.dumps([run_key, provider, zone, kind, sorted(items)], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PurgeBatch:
    batch_id: str
    provider: str
    zone: str
    kind: str
    items: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "provider": self.provider, "zone": self.zone,
                "kind": self.kind, "items": list(self.items)}


@dataclass(frozen=True)
class PurgeResult:
    """What the provider said of one batch: ``done`` (purged on reply), ``pending`` (accepted;
    poll ``completion`` with ``request_id``) or ``failed``. ``purged`` is the count of cached
    objects dropped where the provider says it (the Varnish edge's xkey count)."""

    batch_id: str
    status: CompletionState
    request_id: str | None = None
    purged: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "status": self.status, "request_id": self.request_id,
                "purged": self.purged, "detail": dict(self.detail)}


@runtime_checkable
class CdnProvider(Protocol):
    """One provider's client. Constructors are keyword-only, take their credentials as
    ``csl.config.Secret`` and an injectable ``transport=`` (httpx) or ``client=`` (boto3) seam."""

    name: str
    limits: ProviderLimits

    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        """Send one batch (already within ``limits``); raise the errors above."""
        ...

    def completion(self, zone: Zone, request_id: str) -> CompletionState:
        """Where an asynchronous purge stands: ``pending``, ``done`` or ``failed``."""
        ...

    async def completion_async(self, zone: Zone, request_id: str) -> CompletionState:
        """The same without blocking an event loop (the triggerer's)."""
        ...

    def health(self, zone: Zone) -> dict[str, Any]:
        """Reachability and latency (and hit ratio where the provider exposes it); never raises."""
        ...

    def close(self) -> None:
        ...


class ClientOwner:
    """``close()`` and the context-manager protocol for a provider that owns one httpx client
    (``self._client``)."""

    _client: Any

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CompletesOnReply:
    """``completion`` for providers whose purge is done when the API answers (Cloudflare's Instant
    Purge, Fastly, the local edge)."""

    def completion(self, zone: Zone, request_id: str) -> CompletionState:
        return "done"

    async def completion_async(self, zone: Zone, request_id: str) -> CompletionState:
        return "done"


async def completion_in_thread(provider: CdnProvider, zone: Zone, request_id: str) -> CompletionState:
    """``completion_async`` for providers whose client is synchronous (boto3): run it in a worker
    thread so the event loop keeps turning."""
    return await asyncio.to_thread(provider.completion, zone, request_id)
