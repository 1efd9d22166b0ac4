"""Storage cleanup: expired temporary uploads and old orphans go to quarantine, not away.

Candidates are temporary uploads (``temp_prefix``) older than ``temp_ttl_h`` and objects the
integrity sweep has reported as ``orphan`` for longer than ``orphan_grace_h`` (re-checked
now: still there, still old, still referenced by no row). The whole list is made first; when
it is longer than ``max_objects`` the run stops before touching anything.

A move is copy → verify (size and ETag of the copy) → delete the original, on the same
provider, under ``_quarantine/<run date>/<original key>``, with a ``csl_ops.storage_quarantine``
row written first, so a move interrupted at any point is finished by the next run and
``restore`` can always bring the object back. Quarantine older than its retention is
deleted only when ``purge`` is asked for explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from csl.errors import CslError, StorageError
from csl.storage import StorageProvider

__all__ = ["QUARANTINE_PREFIX", "CleanupError", "CapExceeded", "Candidate", "find_candidates", "quarantine",
           "restore", "purge", "run_cleanup"]

log = logging.getLogger("csl.cleanup")

QUARANTINE_PREFIX = "_quarantine/"


class CleanupError(CslError):
    """The cleanup cannot run as asked."""


class CapExceeded(CleanupError):
    """More candidates than ``max_objects``: nothing was touched."""


@dataclass(frozen=True)
class Candidate:
    provider: str
    key: str
    reason: str  # expired_upload | orphan
    size: int
    etag: str
    last_modified: str


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _referenced(conn: psycopg.Connection, key: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM audio_samples WHERE file_url = %(k)s) "
        "OR EXISTS (SELECT 1 FROM generations WHERE result_url = %(k)s)", {"k": key}).fetchone()[0]


def find_candidates(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, temp_prefix: str,
                    temp_ttl_h: float, orphan_grace_h: float, now: datetime | None = None) -> list[Candidate]:
    if not temp_prefix.endswith("/") or temp_prefix.startswith(QUARANTINE_PREFIX):
        raise CleanupError(f"temp_prefix must be a folder (end with '/') outside {QUARANTINE_PREFIX}, "
                           f"got {temp_prefix!r}")
    now = now or datetime.now(timezone.utc)
    by_name = {p.name: p for p in providers}
    out: list[Candidate] = []
    for provider in providers:
        for item in provider.iter_objects(temp_prefix):
            if item.last_modified and now - _parse_time(item.last_modified) > timedelta(hours=temp_ttl_h):
                out.append(Candidate(provider.name, item.key, "expired_upload", item.size, item.etag,
                                     item.last_modified))
    rows = conn.execute(
        "SELECT object_key, provider FROM csl_ops.storage_findings WHERE kind = 'orphan' AND resolved_at IS NULL "
        "AND first_seen_at < %s ORDER BY object_key, provider", (now - timedelta(hours=orphan_grace_h),)).fetchall()
    for key, name in rows:
        provider = by_name.get(name)
        if provider is None or key.startswith((QUARANTINE_PREFIX, temp_prefix)):
            continue
        head = provider.head(key)
        if head is None or _referenced(conn, key):
            continue  # gone, or referenced again since the sweep: not an orphan any more
        modified = head["last_modified"]
        if now - modified <= timedelta(hours=orphan_grace_h):
            continue  # rewritten recently
        out.append(Candidate(name, key, "orphan", head["size"], head["etag"], modified.isoformat()))
    return out


def _move(provider: StorageProvider, source: str, target: str, *, size: int, etag: str) -> None:
    """copy → verify → delete; safe to repeat after an interruption at any step."""
    if provider.head(source) is not None:
        provider.copy(source, target)
        copied = provider.head(target)
        if copied is None or copied["size"] != size or (etag and "-" not in etag and copied["etag"] != etag):
            raise StorageError(provider.name, f"copy of {source!r} to {target!r} does not match the original "
                               f"(size {size}, etag {etag}): original kept")
        provider.delete(source)
    elif provider.head(target) is None:
        raise StorageError(provider.name, f"{source!r} is neither in place nor at {target!r}")


def quarantine(conn: psycopg.Connection, providers: Sequence[StorageProvider], candidates: Sequence[Candidate],
               *, run_key: str, today: str) -> list[dict[str, Any]]:
    by_name = {p.name: p for p in providers}
    moved = []
    for c in candidates:
        target = f"{QUARANTINE_PREFIX}{today}/{c.key}"
        with conn.transaction():
            row = conn.execute(
                "SELECT quarantine_key FROM csl_ops.storage_quarantine WHERE provider = %s AND object_key = %s "
                "AND restored_at IS NULL AND purged_at IS NULL", (c.provider, c.key)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO csl_ops.storage_quarantine (provider, object_key, quarantine_key, reason, size_bytes, "
                    "etag, run_key) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (c.provider, c.key, target, c.reason, c.size, c.etag, run_key))
            else:
                target = row[0]  # an earlier, interrupted move: finish it
        _move(by_name[c.provider], c.key, target, size=c.size, etag=c.etag)
        moved.append({**asdict(c), "quarantine_key": target})
        log.info("quarantined %s on %s (%s) as %s", c.key, c.provider, c.reason, target)
    return moved


def restore(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, key: str | None = None,
            run_key: str | None = None) -> list[dict[str, Any]]:
    """Move quarantined objects back (one key, or everything a run moved)."""
    if not key and not run_key:
        raise CleanupError("restore needs a key or a run key")
    by_name = {p.name: p for p in providers}
    rows = conn.execute(
        "SELECT id, provider, object_key, quarantine_key, size_bytes, etag FROM csl_ops.storage_quarantine "
        "WHERE restored_at IS NULL AND purged_at IS NULL AND (object_key = %s OR run_key = %s) ORDER BY id",
        (key, run_key)).fetchall()
    if not rows:
        raise CleanupError(f"nothing in quarantine for {'key ' + repr(key) if key else 'run ' + repr(run_key)}")
    restored = []
    for id_, name, original, held, size, etag in rows:
        provider = by_name.get(name)
        if provider is None:
            raise CleanupError(f"quarantined on provider {name!r}, which is not configured")
        _move(provider, held, original, size=size, etag=etag)
        conn.execute("UPDATE csl_ops.storage_quarantine SET restored_at = now() WHERE id = %s", (id_,))
        restored.append({"provider": name, "key": original, "from": held})
    return restored


def purge(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, retention_days: int,
          max_objects: int, dry_run: bool) -> list[dict[str, Any]]:
    by_name = {p.name: p for p in providers}
    rows = conn.execute(
        "SELECT id, provider, object_key, quarantine_key FROM csl_ops.storage_quarantine WHERE restored_at IS NULL "
        "AND purged_at IS NULL AND moved_at < now() - make_interval(days => %s) ORDER BY id",
        (retention_days,)).fetchall()
    if len(rows) > max_objects:
        raise CapExceeded(f"{len(rows)} quarantined objects are past retention, more than max_objects={max_objects}; "
                          "nothing was purged")
    out = [{"provider": r[1], "key": r[2], "quarantine_key": r[3]} for r in rows]
    if dry_run:
        return out
    for id_, name, _, held in rows:
        by_name[name].delete(held)
        conn.execute("UPDATE csl_ops.storage_quarantine SET purged_at = now() WHERE id = %s", (id_,))
    return out


def run_cleanup(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, run_key: str,
                temp_prefix: str = "tmp/", temp_ttl_h: float = 24, orphan_grace_h: float = 72,
                max_objects: int = 1000, dry_run: bool = True, purge_quarantine: bool = False,
                quarantine_retention_days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    """Find, cap, then (unless ``dry_run``) quarantine; optionally purge old quarantine."""
    if max_objects < 0:
        raise CleanupError(f"max_objects must be >= 0, got {max_objects}")
    now = now or datetime.now(timezone.utc)
    candidates = find_candidates(conn, providers, temp_prefix=temp_prefix, temp_ttl_h=temp_ttl_h,
                                 orphan_grace_h=orphan_grace_h, now=now)
    if len(candidates) > max_objects:
        raise CapExceeded(f"{len(candidates)} objects would move to quarantine, more than max_objects={max_objects}; "
                          "nothing was touched (raise max_objects after checking the dry run)")
    result: dict[str, Any] = {"dry_run": dry_run, "candidates": [asdict(c) for c in candidates],
                              "by_reason": {}, "moved": [], "purged": []}
    for c in candidates:
        result["by_reason"][c.reason] = result["by_reason"].get(c.reason, 0) + 1
    if not dry_run:
        result["moved"] = quarantine(conn, providers, candidates, run_key=run_key, today=now.strftime("%Y%m%d"))
    if purge_quarantine:
        result["purged"] = purge(conn, providers, retention_days=quarantine_retention_days,
                                 max_objects=max_objects, dry_run=dry_run)
    return result
