"""What the remote CDN clients share: sending one request through httpx with transport failures
mapped to ``CdnUnavailable``, one mapping of the answer's status to the errors of ``csl.cdn.base``,
``Retry-After`` read as seconds, and a health probe that never raises.

Each provider says how its error bodies read (``error_of``) and, where its API says so, which
refusals are about a batch's size (``too_large``); the rest is the same for all of them:

- 2xx → the response;
- 429 → ``Throttled`` with the ``Retry-After`` seconds;
- 413, or a refusal ``too_large`` recognises → ``BatchTooLarge``;
- 5xx → ``CdnUnavailable``;
- any other status → ``CdnRefused`` naming the status, the provider's code and message.

Error text from a provider is hostile input: it is cut to one short line, and every credential the
client holds is masked out of it, so no message or log line can carry a token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx

from csl.cdn.base import (
    BatchTooLarge,
    CdnInputError,
    CdnRefused,
    CdnUnavailable,
    ProviderLimits,
    PurgeBatch,
    Throttled,
    Zone,
)
from csl.config import Secret

__all__ = ["MAX_RETRY_AFTER_S", "ErrorOf", "check", "json_body", "one_line", "prefix_path", "probe", "require_batch", "require_zone_id",
           "retry_after_s", "send", "send_async"]

# (code, message) from an error body; either may be None when the body does not say
ErrorOf = Callable[[Any], "tuple[str | int | None, str | None]"]
_MASK = "***"
MAX_RETRY_AFTER_S = 3600.0


def require_zone_id(provider: str, zone: Zone) -> str:
    """The zone's provider identifier, or ``CdnInputError`` when the zone has none."""
    if not zone.zone_id:
        raise CdnInputError(f"CDN zone {zone.name!r} has no zone_id for provider {provider!r}")
    return zone.zone_id


def require_batch(provider: str, limits: ProviderLimits, zone: Zone, batch: PurgeBatch) -> None:
    """Refuse, before any call, a batch this provider cannot send: a purge kind it does not have
    (``CdnInputError``), an empty batch of a kind that needs items (``CdnInputError``), more items
    than it takes in one call (``BatchTooLarge``, so the sender halves it without spending a call)."""
    if not limits.supports(batch.kind):
        kinds = ", ".join(limits.max_items)
        raise CdnInputError(f"CDN provider {provider!r} cannot purge by {batch.kind!r} (zone {zone.name!r}); "
                            f"it purges by: {kinds}")
    if batch.kind != "everything" and not batch.items:
        raise CdnInputError(f"CDN provider {provider!r}: empty {batch.kind!r} batch {batch.batch_id} "
                            f"for zone {zone.name!r}")
    if len(batch.items) > limits.max_items[batch.kind]:
        raise BatchTooLarge(provider, f"{len(batch.items)} {batch.kind} items in batch {batch.batch_id}; "
                                      f"at most {limits.max_items[batch.kind]} per call")


def prefix_path(prefix: str) -> str:
    """A prefix item's path, for providers keyed on paths: from a URL, from Cloudflare's
    ``host/path`` form, or a path as given (``/audio/album-7/``)."""
    if "://" in prefix:
        return urlsplit(prefix).path or "/"
    if prefix.startswith("/"):
        return prefix
    return "/" + prefix.partition("/")[2]


def retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date, at most ``MAX_RETRY_AFTER_S``),
    None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    # a provider's header is not trusted to park the sender for ever
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it has none (an HTML error page from a proxy, say)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def one_line(text: str, secrets: Iterable[Secret] = (), *, limit: int = 200) -> str:
    """Provider text fit for a message: credentials masked, on one line, bounded."""
    for secret in secrets:
        if secret:
            value = secret.reveal()  # as sent in a header or JSON, or form- and URL-encoded
            for form in sorted({value, quote(value, safe=""), quote_plus(value)}, key=len, reverse=True):
                text = text.replace(form, _MASK)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure(provider: str, exc: httpx.HTTPError, what: str, secrets: Iterable[Secret]) -> CdnUnavailable:
    reason = one_line(str(exc), secrets) or "no detail"
    return CdnUnavailable(provider, f"{what}: unreachable ({type(exc).__name__}: {reason})")


def send(client: httpx.Client, provider: str, what: str, method: str, url: str, *,
         secrets: Iterable[Secret] = (), **kwargs: Any) -> httpx.Response:
    """One request; a transport failure (connect error, timeout, broken connection) raises
    ``CdnUnavailable`` naming ``what`` was being done. The answer is not checked here."""
    try:
        return client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise _failure(provider, exc, what, secrets) from None


async def send_async(client: httpx.AsyncClient, provider: str, what: str, method: str, url: str, *,
                     secrets: Iterable[Secret] = (), **kwargs: Any) -> httpx.Response:
    """``send`` for an ``httpx.AsyncClient``."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise _failure(provider, exc, what, secrets) from None


def check(provider: str, what: str, response: httpx.Response, *, error_of: ErrorOf,
          too_large: Callable[[int, str | int | None, str], bool] | None = None,
          succeeded: Callable[[Any], bool] | None = None,
          secrets: Iterable[Secret] = ()) -> httpx.Response:
    """``response`` when it is a success (2xx, and ``succeeded(body)`` where the provider can say
    "no" in a 200); otherwise the error of ``csl.cdn.base`` its status means, naming ``what`` was
    being done, the status, the provider's code and message."""
    status = response.status_code
    body = json_body(response)
    if 200 <= status < 300 and (succeeded is None or succeeded(body)):
        return response
    code, message = error_of(body) if body is not None else (None, None)
    if message is None:
        message = response.text if body is None else json.dumps(body)
    message = one_line(message, secrets) or response.reason_phrase
    detail = f"{what} refused: HTTP {status}" + (f" code {code}" if code is not None else "") + f": {message}"
    if status == 429:
        wait = retry_after_s(response)
        raise Throttled(provider, f"{what} throttled: HTTP 429: {message}", retry_after_s=wait)
    if status >= 500:
        raise CdnUnavailable(provider, f"{what} failed: HTTP {status}: {message}")
    if status == 413 or (too_large is not None and too_large(status, code, message)):
        raise BatchTooLarge(provider, detail, status=status, code=code)
    raise CdnRefused(provider, detail, status=status, code=code)


def probe(provider: str, zone: Zone, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A health answer that never raises: ``call`` does the provider's cheapest authenticated read
    and returns what it learned (``ok`` and anything else worth showing) or raises; the answer adds
    the provider, the zone and the latency. An exception becomes ``ok: False`` with its message."""
    started = time.perf_counter()
    result: dict[str, Any] = {"provider": provider, "zone": zone.name}
    try:
        result.update(call())
    except Exception as exc:  # noqa: BLE001 - health reports every failure instead of raising it
        result.update(ok=False, error=str(exc) or type(exc).__name__)
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result
