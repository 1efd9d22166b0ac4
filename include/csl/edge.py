"""The caching edge in front of the public audio bucket (Varnish + xkey locally).

Its VCL lives in ``stack/varnish/edge.vcl``; ``/__health`` is answered by the edge itself
and says whether its backend (the primary provider's public bucket) is healthy.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from csl.config import EdgeSettings
from csl.errors import ConfigError

__all__ = ["Edge"]


class Edge:
    def __init__(self, settings: EdgeSettings, *, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 5.0) -> None:
        if not settings.base_url:
            raise ConfigError("CDN_BASE_URL", "not set; expected the edge's http(s):// base URL")
        self.settings = settings
        self._client = httpx.Client(base_url=settings.base_url, transport=transport, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Edge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.get(path, **kwargs)

    def health(self) -> dict[str, Any]:
        """Edge answers and reports its backend healthy; never raises."""
        started = time.perf_counter()
        result: dict[str, Any] = {"provider": self.settings.provider, "base_url": self.settings.base_url}
        try:
            response = self._client.get("/__health")
        except httpx.HTTPError as exc:
            result.update(ok=False, error=f"edge unreachable: {type(exc).__name__}: {exc}")
            return result
        backend = response.headers.get("x-backend-healthy")
        result.update(status=response.status_code, backend_healthy=backend == "true",
                      latency_ms=round((time.perf_counter() - started) * 1000, 2))
        if response.status_code != 200:
            result.update(ok=False, error=f"edge answered HTTP {response.status_code} on /__health")
        elif backend != "true":
            result.update(ok=False, error="edge is up but its backend (public bucket) is unhealthy")
        else:
            result["ok"] = True
        return result
