"""``csl_ops.cdn_purge_queue``: what the edge must stop serving, written where a public object's
bytes change or go (replication replacing a copy, ``StorageService.delete``, cleanup's quarantine)
and drained by the purge (``csl.cdn.purge``, the ``csl_cdn_purge`` DAG).

One owed row per (storage provider, key): enqueuing it again while owed updates the row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["edge_tags", "enqueue_purge", "public_url", "published_base_url", "queue_purges"]

_UPSERT = (
    "INSERT INTO csl_ops.cdn_purge_queue (provider, object_key, public_url, tags, reason, source_run) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (provider, object_key) WHERE purged_at IS NULL "
    "DO UPDATE SET reason = excluded.reason, source_run = excluded.source_run, enqueued_at = now(), "
    "public_url = excluded.public_url, tags = excluded.tags")


def public_url(zone_base_url: str | None, key: str) -> str | None:
    """Where the edge serves a published object: its zone's base URL and the key, percent-encoded
    as the edge receives it; None when no edge is configured."""
    if not zone_base_url:
        return None
    return f"{zone_base_url.rstrip('/')}/{quote(key, safe='/~')}"


def edge_tags(bucket: str, key: str) -> list[str]:
    """The surrogate key the edge gives every cached copy of an object (``obj:/<bucket>/<key>``)."""
    return [f"obj:/{bucket}/{quote(key, safe='/~')}"]


def enqueue_purge(conn: Any, *, provider: str, key: str, url: str | None, tags: Sequence[str], reason: str,
                  source_run: str) -> None:
    """Owe the edge a purge of this object (``reason``: replaced, restored, deleted, quarantined…)."""
    conn.execute(_UPSERT, (provider, key, url, list(tags), reason, source_run))


def published_base_url(settings: Any) -> str | None:
    """The base URL the edge serves published samples under (the audio zone's); None without a CDN."""
    cdn = settings.edge
    if not cdn.enabled:
        return None
    return next((zone.base_url for zone in cdn.zones or () if zone.name == "audio"), None)


def queue_purges(connect: Any, *, base_url: str | None, source_run: str) -> Any:
    """A ``purges`` callable for ``StorageService``: each public copy it removes becomes an owed purge."""
    def owe(*, provider: str, key: str, bucket: str, reason: str) -> None:
        with connect() as conn:
            enqueue_purge(conn, provider=provider, key=key, url=public_url(base_url, key), tags=edge_tags(bucket, key),
                          reason=reason, source_run=source_run)
            if not conn.autocommit:
                conn.commit()
    return owe
