"""Storage cleanup: expired temporary uploads and old orphans go to quarantine, not away.

Candidates are temporary uploads older than ``temp_ttl_h`` under ``temp_prefix`` — one of
``TEMP_PREFIXES`` or a folder under one, nothing else — and objects the integrity sweep has
reported as ``orphan`` for longer than ``orphan_grace_h`` (re-checked now: still there, still
old). Every candidate, whatever its reason, is then checked against every reference column
(``REFERENCE_COLUMNS``, URL-form values normalised to keys, one set-based query): a referenced
object never moves. The whole list is made first; a run stops before touching anything when
it is longer than ``max_objects``, or when it is more than ``max_share`` of the objects a
provider holds (a database restored empty makes everything look orphaned). A dry run reports
such a refusal instead of raising.

A move is copy → verify (size and ETag of the copy) → delete the original, on the same
provider, under ``_quarantine/<run date>/<original key>``, with a ``csl_ops.storage_quarantine``
row written first, so a move interrupted at any point is finished by the next run and
``restore`` can always bring the object back. ``restore`` refuses to overwrite a different
object that now lives at the original key unless ``force``. Quarantine older than its
retention is deleted only when ``purge`` is asked for explicitly. With a subset of the
providers, rows on the others are skipped and reported, never half-done.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from csl.errors import BadInput, StorageError
from csl.storage import HEALTH_PREFIX, QUARANTINE_PREFIX, TEMP_PREFIXES, StorageProvider
from csl.storage.references import REFERENCE_COLUMNS, referenced_keys

__all__ = [
    "DEFAULT_MAX_SHARE",
    "QUARANTINE_PREFIX",
    "REFERENCE_COLUMNS",
    "TEMP_PREFIXES",
    "XCOM_SAMPLE",
    "Candidate",
    "CapExceeded",
    "CleanupError",
    "CleanupResult",
    "RestoreConflict",
    "check_temp_prefix",
    "find_candidates",
    "purge",
    "quarantine",
    "resolve_dry_run",
    "restore",
    "run_cleanup",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARE = 0.10  # a run may move at most this share of a provider's objects
XCOM_SAMPLE = 100  # candidates named in a run's summary; the log has them all
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CleanupError(BadInput):
    """The cleanup cannot run as asked."""


class CapExceeded(CleanupError):
    """More candidates than ``max_objects``, or than ``max_share`` of a provider: nothing was touched."""


class RestoreConflict(CleanupError):
    """Restoring would overwrite a different object that now lives at the original key."""


@dataclass(frozen=True)
class Candidate:
    provider: str
    key: str
    reason: str  # expired_upload | orphan
    size: int
    etag: str
    last_modified: str


def check_temp_prefix(prefix: str) -> str:
    """``prefix`` when it is one of ``TEMP_PREFIXES`` or a plain folder under one; else one line."""
    base = next((t for t in TEMP_PREFIXES if isinstance(prefix, str) and prefix.startswith(t)), None)
    rest = prefix[len(base):] if base else ""
    if base is None or not prefix.endswith("/") or any(not _SEGMENT.fullmatch(s) for s in rest.split("/")[:-1]):
        raise CleanupError(f"temp_prefix must be one of {', '.join(map(repr, TEMP_PREFIXES))} or a plain folder "
                           f"under one (ending with '/'), got {prefix!r}")
    return prefix


def resolve_dry_run(dry_run: bool | None, *, scheduled: bool) -> bool:
    """``None`` means automatic: a dry run unless the nightly schedule started the run."""
    return (not scheduled) if dry_run is None else bool(dry_run)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _is_marker(key: str, size: int) -> bool:
    return key.endswith("/") and not size  # a folder marker, not an object anyone stored


def find_candidates(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, temp_prefix: str,
                    temp_ttl_h: float, orphan_grace_h: float, now: datetime | None = None,
                    buckets: Sequence[str] | None = None, references: Sequence[tuple[str, str]] = REFERENCE_COLUMNS,
                    ) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates, kept): kept are those some row refers to, which never move."""
    check_temp_prefix(temp_prefix)
    now = now or datetime.now(UTC)
    by_name = {p.name: p for p in providers}
    found: list[Candidate] = []
    for provider in providers:
        for item in provider.iter_objects(temp_prefix):
            if _is_marker(item.key, item.size):
                continue
            if item.last_modified and now - _parse_time(item.last_modified) > timedelta(hours=temp_ttl_h):
                found.append(Candidate(provider.name, item.key, "expired_upload", item.size, item.etag,
                                       item.last_modified))
    rows = conn.execute(
        "SELECT object_key, provider FROM csl_ops.storage_findings WHERE kind = 'orphan' AND resolved_at IS NULL "
        "AND first_seen_at < %s AND provider = ANY(%s) ORDER BY object_key, provider",
        (now - timedelta(hours=orphan_grace_h), list(by_name))).fetchall()
    for key, name in rows:
        if key.startswith((QUARANTINE_PREFIX, HEALTH_PREFIX, *TEMP_PREFIXES)):
            continue  # never orphans (the temporary folders are handled above, by age)
        head = by_name[name].head(key)
        if head is None or _is_marker(key, head["size"]):
            continue  # gone since the sweep
        modified = head["last_modified"]
        if now - modified <= timedelta(hours=orphan_grace_h):
            continue  # rewritten recently
        found.append(Candidate(name, key, "orphan", head["size"], head["etag"], modified.isoformat()))
    buckets = list(buckets) if buckets else sorted({p.bucket for p in providers})
    live = referenced_keys(conn, (c.key for c in found), buckets=buckets, columns=references) if found else set()
    kept = [c for c in found if c.key in live]
    for c in kept:
        log.warning("kept %s on %s (%s): a row refers to it", c.key, c.provider, c.reason)
    return [c for c in found if c.key not in live], kept


def _count_objects(provider: StorageProvider) -> int:
    return sum(1 for o in provider.iter_objects("") if not o.key.startswith(QUARANTINE_PREFIX)
               and not _is_marker(o.key, o.size))


def _check_caps(candidates: Sequence[Candidate], providers: Sequence[StorageProvider], *, max_objects: int,
                max_share: float) -> tuple[dict[str, int], str | None]:
    """(objects listed per provider with candidates, the refusal or None)."""
    if len(candidates) > max_objects:
        return {}, (f"{len(candidates)} objects would move to quarantine, more than max_objects={max_objects}; "
                    "nothing was touched (raise max_objects after checking the dry run)")
    per: dict[str, int] = {}
    for c in candidates:
        per[c.provider] = per.get(c.provider, 0) + 1
    listed = {}
    for provider in providers:
        if provider.name not in per:
            continue
        listed[provider.name] = total = _count_objects(provider)
        if per[provider.name] > max_share * total:
            share = per[provider.name] / total if total else 1.0
            return listed, (f"{per[provider.name]} of the {total} objects on provider {provider.name!r} "
                            f"({share:.1%}) would move to quarantine, more than max_share={max_share:.0%}; "
                            "nothing was touched (raise max_share after checking the dry run)")
    return listed, None


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
               *, run_key: str, today: str, edge_base_url: str | None = None) -> list[dict[str, Any]]:
    """Move each candidate under the quarantine folder (recorded first, so an interrupted move is
    finished by the next run). An object's published (public-read) copy, a copy publication made,
    goes away with it and the edge is owed a purge; a restore brings back the original, and the
    next publication the copy if the sample is approved again."""
    from csl.cdn.queue import edge_tags, enqueue_purge, public_url

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
        public = by_name[c.provider].withdraw_published(c.key)
        if public is not None:
            enqueue_purge(conn, provider=c.provider, key=c.key, url=public_url(edge_base_url, c.key),
                          tags=edge_tags(public, c.key), reason="quarantined", source_run=run_key)
        moved.append({**asdict(c), "quarantine_key": target})
        log.info("quarantined %s on %s (%s) as %s", c.key, c.provider, c.reason, target)
    return moved


def _split(rows: list[tuple], providers: Sequence[StorageProvider]) -> tuple[list[tuple], list[dict[str, Any]]]:
    """Rows on the given providers, and a report of those on others (column 1 is the provider)."""
    names = {p.name for p in providers}
    skipped = [{"provider": r[1], "key": r[2], "reason": f"provider {r[1]!r} is not among {sorted(names)}"}
               for r in rows if r[1] not in names]
    return [r for r in rows if r[1] in names], skipped


def _same_object(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None or a["size"] != b["size"]:
        return False
    sha = a["metadata"].get("sha256")
    return a["etag"] == b["etag"] or (sha is not None and sha == b["metadata"].get("sha256"))


def restore(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, key: str | None = None,
            run_key: str | None = None, force: bool = False) -> dict[str, Any]:
    """Move quarantined objects back (one key, or everything a run moved) on ``providers``;
    returns ``{"restored": [...], "skipped": [...]}`` (rows on other providers).

    Before anything moves, every original key is checked: a different object living there now
    refuses the whole restore (``RestoreConflict``) unless ``force`` (then it is overwritten)."""
    if not key and not run_key:
        raise CleanupError("restore needs a key or a run key")
    what = "key " + repr(key) if key else "run " + repr(run_key)
    rows = conn.execute(
        "SELECT id, provider, object_key, quarantine_key, size_bytes, etag FROM csl_ops.storage_quarantine "
        "WHERE restored_at IS NULL AND purged_at IS NULL AND (object_key = %s OR run_key = %s) ORDER BY id",
        (key, run_key)).fetchall()
    if not rows:
        raise CleanupError(f"nothing in quarantine for {what}")
    mine, skipped = _split(rows, providers)
    if not mine:
        raise CleanupError(f"everything in quarantine for {what} is on provider(s) "
                           f"{sorted({s['provider'] for s in skipped})}, not among those given "
                           f"({', '.join(p.name for p in providers)}); nothing restored")
    by_name = {p.name: p for p in providers}
    conflicts = []
    for _, name, original, held, _, _ in mine:
        provider = by_name[name]
        there = provider.head(original)
        if there is not None and not _same_object(there, provider.head(held) or there):
            conflicts.append((name, original, there))
    if conflicts and not force:
        name, original, there = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise RestoreConflict(f"restore would overwrite {original!r} on provider {name!r}: a different object "
                              f"({there['size']} bytes, written {there['last_modified']}) lives there now{more}; "
                              "nothing restored (force / --force overwrites it)")
    restored = []
    for id_, name, original, held, size, etag in mine:
        _move(by_name[name], held, original, size=size, etag=etag)
        conn.execute("UPDATE csl_ops.storage_quarantine SET restored_at = now() WHERE id = %s", (id_,))
        restored.append({"provider": name, "key": original, "from": held})
    for s in skipped:
        log.warning("not restored: %s on %s (%s)", s["key"], s["provider"], s["reason"])
    return {"restored": restored, "skipped": skipped}


def purge(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, retention_days: int,
          max_objects: int, dry_run: bool) -> dict[str, Any]:
    """Delete quarantine past its retention on ``providers``: ``{"purged": [...], "skipped": [...]}``."""
    rows = conn.execute(
        "SELECT id, provider, object_key, quarantine_key FROM csl_ops.storage_quarantine WHERE restored_at IS NULL "
        "AND purged_at IS NULL AND moved_at < now() - make_interval(days => %s) ORDER BY id",
        (retention_days,)).fetchall()
    mine, skipped = _split(rows, providers)
    if len(mine) > max_objects:
        raise CapExceeded(f"{len(mine)} quarantined objects are past retention, more than max_objects={max_objects}; "
                          "nothing was purged")
    out = [{"provider": r[1], "key": r[2], "quarantine_key": r[3]} for r in mine]
    if not dry_run:
        by_name = {p.name: p for p in providers}
        for id_, name, _, held in mine:
            by_name[name].delete(held)
            conn.execute("UPDATE csl_ops.storage_quarantine SET purged_at = now() WHERE id = %s", (id_,))
    return {"purged": out, "skipped": skipped}


@dataclass(frozen=True, kw_only=True)
class CleanupResult:
    """A cleanup run: its candidates (as dicts of ``Candidate``), what moved and was purged, and
    the refusal a dry run reports instead of raising. ``as_dict()`` is the whole result (the
    CLI's ``--json``); ``summary()`` is small enough for XCom and the run record."""

    dry_run: bool
    refused: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_provider: dict[str, int] = field(default_factory=dict)
    listed: dict[str, int] = field(default_factory=dict)  # objects per provider with candidates (the share cap)
    kept_referenced: list[dict[str, Any]] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    purged: list[dict[str, Any]] = field(default_factory=list)
    purge_skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "refused": self.refused, "candidates": self.candidates,
                "by_reason": self.by_reason, "by_provider": self.by_provider, "listed": self.listed,
                "kept_referenced": self.kept_referenced, "moved": self.moved, "purged": self.purged,
                "purge_skipped": self.purge_skipped}

    def summary(self, *, sample: int = XCOM_SAMPLE) -> dict[str, Any]:
        """Counts, plus the first ``sample`` candidates (the log and ``csl_ops.storage_quarantine``
        have every one)."""
        return {"dry_run": self.dry_run, "refused": self.refused, "by_reason": self.by_reason,
                "by_provider": self.by_provider, "listed": self.listed,
                "candidates": len(self.candidates), "kept_referenced": len(self.kept_referenced),
                "moved": len(self.moved), "purged": len(self.purged),
                "purge_skipped": len(self.purge_skipped), "sample": self.candidates[:sample],
                "sample_truncated": len(self.candidates) > sample}

    def _log(self) -> None:
        """Every candidate, one line each (would move / moved), and the refusal a real run would meet."""
        verb = "would move" if self.dry_run else "moved"
        for c in self.candidates:
            log.info("%s %s on %s (%s, %s bytes, last modified %s)", verb, c["key"], c["provider"], c["reason"],
                     c["size"], c["last_modified"])
        if self.refused:
            log.warning("a real run would be refused: %s", self.refused)


def run_cleanup(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, run_key: str,
                temp_prefix: str = "tmp/", temp_ttl_h: float = 24, orphan_grace_h: float = 72,
                max_objects: int = 1000, max_share: float = DEFAULT_MAX_SHARE, dry_run: bool = True,
                purge_quarantine: bool = False, quarantine_retention_days: int = 30, now: datetime | None = None,
                buckets: Sequence[str] | None = None, edge_base_url: str | None = None,
                references: Sequence[tuple[str, str]] = REFERENCE_COLUMNS) -> CleanupResult:
    """Find, cap, then (unless ``dry_run``) quarantine; optionally purge old quarantine. Every
    candidate is logged (``csl.storage.cleanup``), and every object kept because a row refers to it.

    Over a cap a real run raises ``CapExceeded`` and a dry run reports it (``refused``);
    either way nothing moves. An object with a published copy that moves is owed an edge purge
    (``csl_ops.cdn_purge_queue``, its URL under ``edge_base_url``)."""
    check_temp_prefix(temp_prefix)
    for name, value in (("max_objects", max_objects), ("quarantine_retention_days", quarantine_retention_days)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CleanupError(f"{name}: expected a whole number, got {value!r}")
    if max_objects < 0:
        raise CleanupError(f"max_objects must be >= 0, got {max_objects}")
    if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1:
        raise CleanupError(f"max_share must be more than 0 and at most 1, got {max_share}")
    now = now or datetime.now(UTC)
    candidates, kept = find_candidates(conn, providers, temp_prefix=temp_prefix, temp_ttl_h=temp_ttl_h,
                                       orphan_grace_h=orphan_grace_h, now=now, buckets=buckets,
                                       references=references)
    listed, refused = _check_caps(candidates, providers, max_objects=max_objects, max_share=max_share)
    if refused and not dry_run:
        raise CapExceeded(refused)
    by_reason: dict[str, int] = {}
    by_provider: dict[str, int] = {}
    for c in candidates:
        by_reason[c.reason] = by_reason.get(c.reason, 0) + 1
        by_provider[c.provider] = by_provider.get(c.provider, 0) + 1
    moved: list[dict[str, Any]] = []
    if not dry_run:
        moved = quarantine(conn, providers, candidates, run_key=run_key, today=now.strftime("%Y%m%d"),
                           edge_base_url=edge_base_url)
    purged: dict[str, Any] = {"purged": [], "skipped": []}
    if purge_quarantine:
        purged = purge(conn, providers, retention_days=quarantine_retention_days, max_objects=max_objects,
                       dry_run=dry_run)
    result = CleanupResult(dry_run=dry_run, refused=refused, candidates=[asdict(c) for c in candidates],
                           by_reason=by_reason, by_provider=by_provider, listed=listed,
                           kept_referenced=[asdict(c) for c in kept], moved=moved, purged=purged["purged"],
                           purge_skipped=purged["skipped"])
    result._log()
    return result
