"""Cache headers by content type, from the platform's TTL table.

| zone | content types | browser (``max-age``) | edge (``s-maxage``) |
|---|---|---|---|
| audio | ``audio/*`` | 24 h | 7 d |
| images | ``image/*`` | 1 d | 30 d |
| static | everything else | 1 d | 30 d |

Each zone's TTLs can be set (``CDN_<ZONE>_BROWSER_TTL`` / ``CDN_<ZONE>_EDGE_TTL``, in
``csl.config.CdnZoneSettings``). A response carries ``Cache-Control: public, max-age=<browser>,
s-maxage=<edge>``, ``CDN-Cache-Control: max-age=<edge>``, ``Surrogate-Control: max-age=<edge>``
and the zone's provider's tag header (``Cache-Tag`` Cloudflare, ``Surrogate-Key`` Fastly,
``xkey`` Varnish; CloudFront and Azure Front Door purge by path and have none).

An object in S3 can carry only ``Cache-Control`` (and its content type) as a real header; the
rest travels as user metadata (``x-amz-meta-<name>``), which the local edge's VCL reads:
``ObjectHeaders`` is both, for ``put_object`` / ``copy_object``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from csl.cdn.base import ZONES, CdnInputError
from csl.config import CDN_PROVIDERS, DEFAULT_ZONE_TTLS, MAX_CACHE_TTL_S

__all__ = [
    "TAG_HEADERS",
    "CachePolicy",
    "ObjectHeaders",
    "cache_headers",
    "zone_for_content_type",
]

# the header each provider reads an object's cache tags from (None: it has no tags)
TAG_HEADERS: dict[str, str | None] = {"cloudflare": "Cache-Tag", "fastly": "Surrogate-Key", "varnish": "xkey",
                                      "cloudfront": None, "azure": None}
# a cache tag: printable, no spaces or commas (the separators of the tag headers)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9:/._~%@+=-]{0,1023}")


def zone_for_content_type(content_type: str | None) -> str:
    """``audio/*`` → audio, ``image/*`` → images, anything else (or nothing) → static."""
    main = (content_type or "").split(";", 1)[0].strip().lower()
    if main.startswith("audio/"):
        return "audio"
    if main.startswith("image/"):
        return "images"
    return "static"


def _tags(tags: Iterable[str]) -> list[str]:
    checked = []
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise CdnInputError(f"cache tag {tag!r}: letters, digits and ':/._~%@+=-', no spaces or commas, "
                                "at most 1024 characters")
        if tag not in checked:
            checked.append(tag)
    return checked


def cache_headers(zone: str, provider: str, *, ttls: tuple[int, int] | None = None,
                  tags: Iterable[str] = ()) -> dict[str, str]:
    """The response headers of an object in ``zone`` served by ``provider``: the TTL table's (or
    ``ttls`` = (browser, edge) seconds) and, where the provider has tags, its tag header."""
    if zone not in ZONES:
        raise CdnInputError(f"zone must be one of {', '.join(ZONES)}, got {zone!r}")
    if provider not in CDN_PROVIDERS:
        raise CdnInputError(f"provider must be one of {', '.join(CDN_PROVIDERS)}, got {provider!r}")
    browser, edge = ttls if ttls is not None else DEFAULT_ZONE_TTLS[zone]
    for name, value in (("browser TTL", browser), ("edge TTL", edge)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CACHE_TTL_S:
            raise CdnInputError(f"{name} must be whole seconds from 0 to {MAX_CACHE_TTL_S}, got {value!r}")
    headers = {"Cache-Control": f"public, max-age={browser}, s-maxage={edge}",
               "CDN-Cache-Control": f"max-age={edge}",
               "Surrogate-Control": f"max-age={edge}"}
    tag_header = TAG_HEADERS[provider]
    checked = _tags(tags)
    if tag_header and checked:
        headers[tag_header] = (", " if provider == "cloudflare" else " ").join(checked)
    return headers


@dataclass(frozen=True)
class ObjectHeaders:
    """What an upload or a copy stores on the object: ``CacheControl``, and user metadata for the
    headers S3 cannot store (``cdn-cache-control``, ``surrogate-control``, the tag header's name
    lowercased, e.g. ``xkey``)."""

    zone: str
    cache_control: str
    metadata: dict[str, str]

    def put_args(self) -> dict[str, Any]:
        """Extra ``put_object`` / ``copy_object`` arguments (merge ``Metadata`` with your own)."""
        return {"CacheControl": self.cache_control, "Metadata": dict(self.metadata)}


@dataclass(frozen=True)
class CachePolicy:
    """Which headers an object gets: per zone its provider and (browser, edge) TTLs. The default is
    the TTL table on the local Varnish edge; ``from_settings`` takes the configured zones."""

    providers: Mapping[str, str] = field(default_factory=lambda: {zone: "varnish" for zone in ZONES})
    ttls: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_ZONE_TTLS))

    @classmethod
    def from_settings(cls, cdn: Any) -> CachePolicy:
        """From ``csl.config.CdnSettings`` (zones not configured keep the defaults)."""
        providers = {zone: cdn.provider for zone in ZONES}
        ttls = dict(DEFAULT_ZONE_TTLS)
        for zone in cdn.zones or ():
            providers[zone.name] = zone.provider
            ttls[zone.name] = zone.ttls
        return cls(providers=providers, ttls=ttls)

    def headers(self, zone: str, *, tags: Iterable[str] = ()) -> dict[str, str]:
        return cache_headers(zone, self.providers[zone], ttls=tuple(self.ttls[zone]), tags=tags)  # type: ignore[arg-type]

    def for_content_type(self, content_type: str | None, *, tags: Iterable[str] = ()) -> ObjectHeaders:
        """The headers to store on an object of ``content_type``; its tags are ``zone:<zone>`` and
        ``tags`` (the edge adds ``obj:/<bucket>/<key>`` itself)."""
        zone = zone_for_content_type(content_type)
        headers = self.headers(zone, tags=[f"zone:{zone}", *tags])
        metadata = {"cdn-cache-control": headers["CDN-Cache-Control"],
                    "surrogate-control": headers["Surrogate-Control"]}
        tag_header = TAG_HEADERS[self.providers[zone]]
        if tag_header:
            metadata[tag_header.lower()] = headers[tag_header]
        return ObjectHeaders(zone=zone, cache_control=headers["Cache-Control"], metadata=metadata)
