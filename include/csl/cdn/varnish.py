"""The caching edge in front of the published bucket (Varnish + xkey locally), a ``CdnProvider``.

Its VCL lives in ``stack/varnish/edge.vcl``; ``/__health`` is answered by the edge itself
and says whether its backend (the primary provider's published bucket) is healthy. The edge
tags every object it caches ``obj:/<bucket>/<key>`` (the key as the URL carries it), its folder
``dir:/<bucket>/<folder>`` and the object's own tags (``x-amz-meta-xkey``: ``zone:<zone>``, see
``csl.cdn.headers``); ``purge_objects`` sends ``obj:`` tags, from loopback, in batches under
Varnish's header limit.

Purges (``purge(zone, batch)``), all accepted only from the VCL's ``purgers`` ACL (loopback):

- ``url`` — one ``PURGE <path>`` per URL (the edge answers ``Purged <n>``: the objects dropped);
- ``tag`` — ``PURGE`` with ``xkey-purge: <tags>`` (``Purged <n>``; xkey purges do not move
  ``MAIN.n_purges``, the reply's count is the evidence);
- ``prefix`` — a ban on ``obj.http.x-url`` (the object's bucket path, set by the VCL, so the ban
  lurker can evaluate it): ``x-ban-prefix: samples/zz/``; only letters, digits and ``/_~%-.`` are
  accepted, ``.`` is sent as ``[.]`` so the prefix is never a regex;
- ``everything`` — a ban on ``obj.http.x-zone`` (the zone the object's Content-Type puts it in).

The hit ratio is ``MAIN.cache_hit / (cache_hit + cache_miss)`` from ``varnishstat -j`` on the
edge's ``-n`` work folder (``CDN_VARNISH_WORK_DIR`` or the zone option ``work_dir``); without
``varnishstat`` or the folder there is no ratio, which is not an error. It is the whole edge's
ratio: Varnish keeps no counters per zone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from csl.cdn.base import (
    CdnInputError,
    CdnRefused,
    CdnUnavailable,
    ClientOwner,
    CompletesOnReply,
    ProviderLimits,
    PurgeBatch,
    PurgeResult,
    Zone,
)
from csl.config import CdnSettings
from csl.errors import ConfigError, EdgeError

__all__ = ["VARNISH_LIMITS", "VarnishEdge"]

VARNISH_LIMITS = ProviderLimits(max_items={"url": 100, "tag": 200, "prefix": 20, "everything": 1},
                                rate_per_s=50.0, burst=100)
_PREFIX = re.compile(r"[A-Za-z0-9/_~%.-]+")
_TAG = re.compile(r"[^\s,]+")


class VarnishEdge(ClientOwner, CompletesOnReply):
    """The local edge. ``base_url`` (default ``settings.base_url``) is the edge's root; a zone's
    URLs live under its own base URL on the same edge (``<root>/audio``)."""

    name = "varnish"
    limits = VARNISH_LIMITS

    def __init__(self, settings: CdnSettings, *, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 5.0, base_url: str | None = None, work_dir: str | None = None,
                 varnishstat: str = "varnishstat") -> None:
        base_url = base_url or settings.base_url
        if not base_url:
            raise ConfigError("CDN_BASE_URL", "not set; expected the edge's http(s):// base URL")
        self.settings = settings
        self.base_url = base_url
        self.work_dir = work_dir or settings.varnish_work_dir
        self.varnishstat = varnishstat
        self._client = httpx.Client(base_url=base_url, transport=transport, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"VarnishEdge(base_url={self.base_url!r}, work_dir={self.work_dir!r})"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.get(path, **kwargs)

    # -- the publication's purges (obj: tags) ---------------------------------------------------
    def purge_objects(self, bucket: str, keys: Sequence[str], *, header_limit: int = 6000) -> int:
        """Purge these objects from the cache (every variant of each); returns how many cached
        objects were dropped. Raises ``EdgeError`` naming the answer when the edge refuses."""
        if self.settings.provider != "varnish":
            raise EdgeError(f"purging through CDN provider {self.settings.provider!r} is the CDN module's job")
        return self._purge_tags([f"obj:/{bucket}/{quote(key, safe='/~')}" for key in keys], header_limit)

    def _purge_tags(self, tags: Sequence[str], header_limit: int = 6000) -> int:
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

    # -- CdnProvider --------------------------------------------------------------------------
    def purge(self, zone: Zone, batch: PurgeBatch) -> PurgeResult:
        """Send one batch (see the module docstring for each kind); ``done`` on the edge's reply."""
        if zone.provider != self.name or batch.provider != self.name:
            raise CdnInputError(f"zone {zone.name!r} is served by {zone.provider!r}, not by the Varnish edge")
        if not self.limits.supports(batch.kind):
            raise CdnInputError(f"purge kind {batch.kind!r}: the Varnish edge purges url, tag, prefix, everything")
        if len(batch.items) > self.limits.max_items[batch.kind]:
            raise CdnInputError(f"{batch.kind} batch of {len(batch.items)} items, more than "
                                f"{self.limits.max_items[batch.kind]}")
        if batch.kind == "url":
            paths = [self._path_in_zone(zone, url) for url in batch.items]
            counts = [self._send("PURGE", path, {}, expect=r"Purged (\d+)") for path in paths]
            return PurgeResult(batch.batch_id, "done", purged=sum(counts),
                               detail={"purged_per_url": dict(zip(batch.items, counts, strict=True))})
        if batch.kind == "tag":
            bad = next((tag for tag in batch.items
                        if not isinstance(tag, str) or not _TAG.fullmatch(tag) or not tag.isprintable()), None)
            if bad is not None or not batch.items:
                raise CdnInputError(f"xkey tag {bad!r}: no spaces, commas or control characters")
            try:
                purged = self._purge_tags(list(batch.items))
            except EdgeError as exc:
                raise self._classify(exc) from exc
            return PurgeResult(batch.batch_id, "done", purged=purged)
        if batch.kind == "prefix":
            patterns = [self._ban_prefix(zone, item) for item in batch.items]
            for pattern in patterns:
                self._send("PURGE", "/", {"x-ban-prefix": pattern}, expect=r"Banned")
            return PurgeResult(batch.batch_id, "done", detail={"banned": patterns})
        if batch.items:
            raise CdnInputError("purge kind 'everything' takes no items (it is the whole zone)")
        self._send("PURGE", "/", {"x-ban-zone": zone.name}, expect=r"Banned")
        return PurgeResult(batch.batch_id, "done", detail={"banned_zone": zone.name})

    def _classify(self, exc: EdgeError) -> Exception:
        text = str(exc)
        if "unreachable" in text or "HTTP 5" in text:
            return CdnUnavailable(self.name, text)
        return CdnRefused(self.name, text)

    def _send(self, method: str, path: str, headers: dict[str, str], *, expect: str) -> int:
        try:
            response = self._client.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            raise CdnUnavailable(self.name, f"edge {self.base_url} unreachable: {type(exc).__name__}") from exc
        text = response.text.strip()
        found = re.fullmatch(expect, text)
        if response.status_code >= 500:
            raise CdnUnavailable(self.name, f"HTTP {response.status_code} {text[:200]!r}")
        if response.status_code != 200 or not found:
            raise CdnRefused(self.name, f"HTTP {response.status_code} {text[:200]!r} for {method} {path}",
                             status=response.status_code)
        return int(found.group(1)) if found.groups() else 0

    @staticmethod
    def _zone_path(zone: Zone) -> str:
        return urlsplit(zone.base_url).path.rstrip("/")

    def _path_in_zone(self, zone: Zone, url: str) -> str:
        """The path of an absolute URL under the zone's base URL (its query dropped: the edge
        caches one object per key)."""
        if not isinstance(url, str) or not url.startswith(zone.base_url.rstrip("/") + "/"):
            raise CdnInputError(f"URL {url!r} is not under zone {zone.name!r} ({zone.base_url}/)")
        if any(not ch.isprintable() or ch.isspace() for ch in url):
            raise CdnInputError(f"URL {url!r} contains spaces or control characters")
        return urlsplit(url).path

    def _ban_prefix(self, zone: Zone, item: str) -> str:
        """A prefix (an absolute URL, ``host/path``, a path under the zone, or a key prefix such
        as ``samples/zz/``) → the key prefix, with ``.`` as ``[.]``."""
        if not isinstance(item, str):
            raise CdnInputError(f"prefix {item!r}: expected text")
        base = urlsplit(zone.base_url)
        zone_path = self._zone_path(zone)
        if item.startswith(("http://", "https://")):
            if not (item + "/").startswith(zone.base_url.rstrip("/") + "/"):
                raise CdnInputError(f"prefix {item!r} is not under zone {zone.name!r} ({zone.base_url}/)")
            path = urlsplit(item).path
        elif item.startswith(base.netloc + "/"):
            path = item[len(base.netloc):]
        elif item.startswith("/"):
            path = item
        else:
            path = f"{zone_path}/{item}"
        if zone_path and not path.startswith(zone_path + "/"):
            raise CdnInputError(f"prefix {item!r} is not under zone {zone.name!r} ({zone_path}/)")
        key_prefix = path[len(zone_path) + 1:]
        if not key_prefix:
            raise CdnInputError(f"prefix {item!r} is the whole zone: purge kind 'everything' does that")
        if not _PREFIX.fullmatch(key_prefix) or any(part in (".", "..") for part in key_prefix.split("/")):
            raise CdnInputError(f"prefix {item!r}: only letters, digits and '/_~%.-' (no regex, no dot segments)")
        return key_prefix.replace(".", "[.]")

    # -- health and hit ratio -----------------------------------------------------------------
    def cache_counters(self) -> dict[str, int] | None:
        """``MAIN.cache_hit`` and ``MAIN.cache_miss`` from ``varnishstat -j``; ``None`` when there
        is no work folder, no ``varnishstat`` or no answer."""
        binary = shutil.which(self.varnishstat)
        if not self.work_dir or binary is None:
            return None
        try:
            done = subprocess.run([binary, "-n", self.work_dir, "-j", "-f", "MAIN.cache_hit", "-f", "MAIN.cache_miss"],
                                  capture_output=True, text=True, timeout=5, check=False)
            data = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        counters = data.get("counters", data)  # varnishstat >= 6.5 nests them under "counters"
        try:
            return {"cache_hit": int(counters["MAIN.cache_hit"]["value"]),
                    "cache_miss": int(counters["MAIN.cache_miss"]["value"])}
        except (KeyError, TypeError, ValueError):
            return None

    def hit_ratio(self) -> float | None:
        counters = self.cache_counters()
        if not counters:
            return None
        total = counters["cache_hit"] + counters["cache_miss"]
        return round(counters["cache_hit"] / total, 4) if total else None

    def health(self, zone: Zone | None = None) -> dict[str, Any]:
        """Edge answers and reports its backend healthy, plus its hit ratio; never raises."""
        started = time.perf_counter()
        result: dict[str, Any] = {"provider": self.settings.provider if zone is None else zone.provider,
                                  "base_url": self.settings.base_url if zone is None else zone.base_url}
        if zone is not None:
            result["zone"] = zone.name
        try:
            response = self._client.get("/__health")
        except httpx.HTTPError as exc:
            result.update(ok=False, error=f"edge unreachable: {type(exc).__name__}: {exc}", hit_ratio=None)
            return result
        backend = response.headers.get("x-backend-healthy")
        result.update(status=response.status_code, backend_healthy=backend == "true",
                      latency_ms=round((time.perf_counter() - started) * 1000, 2))
        counters = self.cache_counters()
        total = (counters["cache_hit"] + counters["cache_miss"]) if counters else 0
        result.update(hit_ratio=round(counters["cache_hit"] / total, 4) if total else None,
                      cache_counters=counters)
        if response.status_code != 200:
            result.update(ok=False, error=f"edge answered HTTP {response.status_code} on /__health")
        elif backend != "true":
            result.update(ok=False, error="edge is up but its backend (public bucket) is unhealthy")
        else:
            result["ok"] = True
        return result
