"""The caching edge in front of the published bucket (Varnish + xkey locally).

Its VCL lives in ``stack/varnish/edge.vcl``; ``/__health`` is answered by the edge itself
and says whether its backend (the primary provider's published bucket) is healthy. The edge
tags every object it caches ``obj:/<bucket>/<key>`` (the key as the URL carries it);
``purge_objects`` sends those tags, from loopback, in batches under Varnish's header limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import quote

import httpx

from csl.config import EdgeSettings
from csl.errors import ConfigError, EdgeError

__all__ = ["VarnishEdge"]


class VarnishEdge:
    def __init__(self, settings: EdgeSettings, *, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 5.0) -> None:
        if not settings.base_url:
            raise ConfigError("CDN_BASE_URL", "not set; expected the edge's http(s):// base URL")
        self.settings = settings
        self._client = httpx.Client(base_url=settings.base_url, transport=transport, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.get(path, **kwargs)

    def purge_objects(self, bucket: str, keys: Sequence[str], *, header_limit: int = 6000) -> int:
        """Purge these objects from the cache (every variant of each); returns how many cached
        objects were dropped. Raises ``EdgeError`` naming the answer when the edge refuses."""
        if self.settings.provider != "varnish":
            raise EdgeError(f"purging through CDN provider {self.settings.provider!r} is the CDN module's job")
        tags = [f"obj:/{bucket}/{quote(key, safe='/~')}" for key in keys]
        purged, batch, size = 0, [], 0
        for tag in [*tags, None]:
            if tag is not None and (not batch or size + len(tag) + 1 <= header_limit):
                batch.append(tag)
                size += len(tag) + 1
                continue
            if batch:
                purged += self._purge(" ".join(batch))
            batch, size = ([tag], len(tag) + 1) if tag is not None else ([], 0)
        return purged

    def _purge(self, tags: str) -> int:
        try:
            response = self._client.request("PURGE", "/", headers={"xkey-purge": tags})
        except httpx.HTTPError as exc:
            raise EdgeError(f"edge unreachable for a purge: {type(exc).__name__}: {exc}") from exc
        found = re.fullmatch(r"Purged (\d+)", response.text.strip())
        if response.status_code != 200 or not found:
            raise EdgeError(f"edge refused the purge: HTTP {response.status_code} {response.text.strip()[:200]!r}")
        return int(found.group(1))

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
