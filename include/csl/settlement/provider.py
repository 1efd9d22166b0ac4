"""The payment provider's HTTP side (Stripe Connect transfer semantics): the endpoint rule, what
an answer means, its error bodies."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from csl.errors import ConfigError
from csl.settlement.errors import PayoutProviderUnavailable

# The provider's own error objects say a request was refused; anything else may have been processed.
_REFUSAL_TYPES = frozenset({"invalid_request_error", "card_error"})


def payout_endpoint(endpoint: str, *, setting: str = "payout endpoint") -> str:
    """The payment provider's base URL: https, or http only on loopback (a local test server);
    no credentials, query or fragment in it. ``ConfigError`` naming ``setting`` otherwise, before
    anything is sent."""
    parts = urlsplit(endpoint or "")
    shown = f"{parts.scheme}://{parts.hostname}" if parts.hostname else repr((endpoint or "")[:60])
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(setting, f"expected an https://host[:port] URL, got {shown}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(setting, f"no credentials, query or fragment in the URL ({shown}): "
                                   "the API key goes in the connection's password")
    if parts.scheme == "http":
        try:
            loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(setting, f"http:// only on loopback (a local test server), got {shown}: "
                                       "use https:// for a remote payment provider")
    return endpoint.rstrip("/")


def connection_endpoint(*, schema: str | None, host: str | None, port: int | str | None,
                        setting: str = "payout endpoint") -> str:
    """The payment provider's base URL from a connection's parts: ``schema`` is the scheme
    (``https`` when empty), then the host and the port when there is one; checked as
    ``payout_endpoint`` checks it (a connection without a host is refused, not sent to "None")."""
    host = f"[{host}]" if host and ":" in host and not host.startswith("[") else host or ""  # an IPv6 address
    suffix = f":{port}" if port else ""
    return payout_endpoint(f"{schema or 'https'}://{host}{suffix}", setting=setting)


def classify_answer(status: int, body: Mapping[str, Any] | None) -> str:
    """What a payment provider's answer to a transfer says happened:

    - ``transfer``: it was made (the body is the transfer);
    - ``unauthorized``: 401/403, the API key is wrong: nothing was processed, stop sending;
    - ``refused``: a 4xx with the provider's own error object (``invalid_request_error``,
      ``card_error``): it was not made;
    - ``unknown``: anything else (408, 409, 429, 5xx, a 4xx without a provider error body, e.g. from
      a proxy, an idempotency error, a 200 that is not a transfer): it may have been made; the same
      idempotency key is sent again, or the transfer looked up.
    """
    if status == 200 and body and body.get("object") == "transfer":
        return "transfer"
    if status in (401, 403):
        return "unauthorized"
    error = body.get("error") if isinstance(body, Mapping) else None
    if 400 <= status < 500 and status not in (408, 409, 429) and isinstance(error, Mapping) \
            and error.get("type") in _REFUSAL_TYPES:
        return "refused"
    return "unknown"


class PayoutConfigError(ConfigError):
    """The payment provider refused our credentials (401/403): nothing more is sent."""

    def __init__(self, problem: str, *, counts: Mapping[str, Any] | None = None) -> None:
        super().__init__("payout API key", problem)
        self.counts = dict(counts or {})


def _json_or_none(response: Any) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _stripe_error(response: Any) -> str:
    body = _json_or_none(response)
    error = body.get("error") if body else None
    if isinstance(error, Mapping):
        return f"{error.get('type', 'error')}/{error.get('code', '-')}: {str(error.get('message', ''))[:300]}"
    return f"HTTP {response.status_code}: {response.text[:200]!r}"


@dataclass(frozen=True)
class Answer:
    """What one call to the provider came back with: ``kind`` is ``classify_answer``'s verdict
    (``transfer``, ``unauthorized``, ``refused``, ``unknown``), or ``unreachable`` (no answer),
    or ``not_found`` (a lookup that read every page)."""

    kind: str
    status: int | None = None
    body: dict | None = None
    error: str = ""


class PaymentProvider:
    """The payment provider's HTTP API in Stripe's shapes (form-encoded, ``Authorization: Bearer``,
    ``Idempotency-Key``): the key check, a transfer, the lookup of a transfer by its idempotency
    key. It knows nothing of payouts' states; ``csl.settlement.payouts`` applies its answers."""

    def __init__(self, *, endpoint: str, api_key: str, transport: Any = None, timeout_s: float = 20.0) -> None:
        import httpx

        if not api_key:
            raise ConfigError("payout API key", "not set (the csl_payouts connection's password)")
        self._client = httpx.Client(base_url=payout_endpoint(endpoint), transport=transport, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._client.close()

    def check_key(self) -> None:
        """``GET /v1/balance``: a 401/403 is ``PayoutConfigError``; no or an unreadable answer is
        ``PayoutProviderUnavailable``. Nothing is sent either way."""
        import httpx

        try:
            response = self._client.get("/v1/balance")
        except httpx.HTTPError as exc:
            raise PayoutProviderUnavailable(f"payment provider unreachable ({type(exc).__name__}); nothing sent") from exc
        body = _json_or_none(response)
        if response.status_code in (401, 403):
            raise PayoutConfigError(f"refused by the payment provider (HTTP {response.status_code}: "
                                    f"{_stripe_error(response)}); nothing sent")
        if response.status_code != 200 or not body or body.get("object") != "balance":
            raise PayoutProviderUnavailable(f"payment provider answered the key check with HTTP {response.status_code} "
                                            f"({_stripe_error(response)}); nothing sent")

    def create_transfer(self, form: Mapping[str, str], *, idempotency_key: str) -> Answer:
        """``POST /v1/transfers`` with the idempotency key."""
        import httpx

        try:
            response = self._client.post("/v1/transfers", data=dict(form), headers={"Idempotency-Key": idempotency_key})
        except httpx.HTTPError as exc:
            return Answer("unreachable", error=f"{type(exc).__name__}: {exc}")
        body = _json_or_none(response)
        return Answer(classify_answer(response.status_code, body), response.status_code, body, _stripe_error(response))

    def find_transfer(self, *, transfer_group: str, destination: str | None, idempotency_key: str) -> Answer:
        """The transfer whose metadata carries ``idempotency_key``, among the transfers of the
        group (to the destination), reading every page: ``transfer`` (body = the transfer),
        ``not_found``, ``unauthorized``, or ``unknown``/``unreachable`` (ask again later)."""
        import httpx

        query: dict[str, Any] = {"transfer_group": transfer_group, "limit": 100}
        if destination:
            query["destination"] = destination
        try:
            while True:
                response = self._client.get("/v1/transfers", params=query)
                body = _json_or_none(response)
                if response.status_code in (401, 403):
                    return Answer("unauthorized", response.status_code, body, _stripe_error(response))
                if response.status_code != 200 or not body or body.get("object") != "list":
                    return Answer("unknown", response.status_code, body,
                                  "transfer lookup failed: " + _stripe_error(response))
                for transfer in body.get("data", []):
                    if (transfer.get("metadata") or {}).get("idempotency_key") == idempotency_key:
                        return Answer("transfer", response.status_code, transfer)
                if not body.get("has_more") or not body.get("data"):
                    return Answer("not_found", response.status_code)
                query["starting_after"] = body["data"][-1]["id"]
        except httpx.HTTPError as exc:
            return Answer("unreachable", error=f"transfer lookup failed: {type(exc).__name__}: {exc}")
