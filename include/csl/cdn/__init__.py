"""The CDN in front of the published bucket: zones audio / images / static, each served by a
provider (``CDN_*`` settings, ``csl.config.CdnSettings``).

- ``base`` — the shared vocabulary: ``Zone``, purge batches and results, limits, errors, the
  ``CdnProvider`` interface;
- ``zones`` — ``Cdn`` (the configured zones, a provider per zone built lazily, ``zone_for_url``,
  ``health``) and ``build_provider``;
- ``headers`` — cache headers by content type from the TTL table (``CachePolicy``);
- ``urls`` — public URLs with audio and image transforms;
- ``varnish`` — the local Varnish + xkey edge (dev, test, demo) as a provider.

Cloudflare, CloudFront, Azure Front Door and Fastly are ``csl.cdn.cloudflare`` / ``cloudfront`` /
``azure`` / ``fastly``, imported by ``build_provider`` when a zone uses them. ``VarnishEdge`` is
imported on first use too: it brings httpx, which the purge queue's writers (replication, the
storage service) never need.
"""

from csl.cdn.base import (
    PURGE_KINDS,
    ZONES,
    BatchTooLarge,
    CdnInputError,
    CdnProvider,
    CdnRefused,
    CdnUnavailable,
    ProviderLimits,
    PurgeBatch,
    PurgeResult,
    Throttled,
    Zone,
    batch_id_for,
)
from csl.cdn.headers import TAG_HEADERS, CachePolicy, ObjectHeaders, cache_headers, zone_for_content_type
from csl.cdn.urls import check_transforms, object_path, object_url
from csl.cdn.zones import Cdn, build_provider

__all__ = [
    "PURGE_KINDS",
    "TAG_HEADERS",
    "ZONES",
    "BatchTooLarge",
    "CachePolicy",
    "Cdn",
    "CdnInputError",
    "CdnProvider",
    "CdnRefused",
    "CdnUnavailable",
    "ObjectHeaders",
    "ProviderLimits",
    "PurgeBatch",
    "PurgeResult",
    "Throttled",
    "VarnishEdge",
    "Zone",
    "batch_id_for",
    "build_provider",
    "cache_headers",
    "check_transforms",
    "object_path",
    "object_url",
    "zone_for_content_type",
]


def __getattr__(name: str) -> object:
    if name == "VarnishEdge":
        from csl.cdn.varnish import VarnishEdge

        return VarnishEdge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
