"""Publication: approved samples, and only they, can be read by anyone.

Every object lives in its provider's bucket, which is private. A provider with
``public_bucket`` set also has a *published bucket* (``published_bucket``, default
``<bucket>-published``) whose policy lets anyone GET under ``PUBLISHED_PREFIXES``; the edge
serves that bucket and nothing else. A run makes it hold exactly the objects the database
publishes: the ``file_url`` of every ``audio_samples`` row whose ``approved`` is true (keys or
URL-form values, normalised as ``csl.storage.references`` does).

A run lists the original folders and the published bucket, reads the record of what it
published (``csl_ops.published_objects``), and then:

- **publishes** an approved key with no copy yet, or whose original changed since it was
  copied (size or ETag differs from the record): a server-side copy carrying the cache headers of
  its content type's CDN zone (``csl.cdn.headers.CachePolicy``: ``Cache-Control``, the tag
  metadata such as ``xkey: zone:audio``; the original's metadata kept), then the copy streamed and
  its SHA-256 compared with the original's (its ``sha256`` metadata, else the original streamed
  too). A copy that does not match is deleted at once, never left public: ``corrupt`` when the
  original's own bytes do not match the SHA-256 it was stored with (a finding: the integrity
  sweep reports it, restoring it from another provider is the remedy; it is not copied again
  until the original changes), else ``copy_failed``.
- **withdraws** a published key no approved row names any more (unapproved, deleted, renamed):
  the copy is deleted — the original is never touched — and the edge purged.
- keeps the copy of an approved key whose original is missing (it may be the last copy; the
  integrity sweep reports the missing original), and reports it; an approved key outside
  ``PUBLISHED_PREFIXES`` cannot be published and is reported.

Withdrawals are capped: more than ``max_withdrawals``, or more than ``max_share`` of what is
published, refuses the run before anything changes (a database restored empty, or a bulk
un-approval by mistake, would otherwise take the catalogue offline). A dry run reports the
plan, and the refusal, without changing anything. One run per provider at a time (an advisory
lock; the second is refused, ``PublicationBusy``). Every step is recorded
(``csl_ops.publication_events``); a run that dies half-way is finished by the next, and a run
with nothing to do changes nothing. Edge purges that could not be sent (the edge down, or a
CDN other than the local Varnish) stay owed (``edge_purged = false``) and are retried.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from csl.errors import BadInput, EdgeError, Transient
from csl.storage import PUBLISHED_PREFIXES, ObjectInfo, StorageProvider
from csl.storage.references import references_query

__all__ = ["PUBLISHED_BY", "CopiesDidNotMatch", "Plan", "PublicationBusy", "PublicationError", "PublicationResult",
           "PublicationRun", "WithdrawalCapExceeded", "approved_keys", "make_plan", "publish_all", "run_publication"]

log = logging.getLogger(__name__)

PUBLISHED_BY = ("audio_samples", "file_url", "approved")  # table, key column, the flag that publishes it
_LOCK_CLASS = 0x637370  # "csp": advisory locks (class, hashtext(provider)) of publication runs
XCOM_SAMPLE = 100  # keys named per list in a run's summary; the log and the events have them all
_SHA256 = re.compile(r"[0-9a-f]{64}")


class PublicationError(BadInput):
    """The publication cannot run as asked."""


class WithdrawalCapExceeded(PublicationError):
    """More withdrawals than the caps allow: nothing was changed."""


class PublicationBusy(Transient):
    """Another run publishes for the same provider now (the CLI while the DAG runs): try later."""


class CopiesDidNotMatch(Transient):
    """Copies of sound originals did not match them (deleted, never public): a copy can fail in
    transit, so the run is tried again and copies them again."""


@dataclass
class Plan:
    publish: list[tuple[str, str]] = field(default_factory=list)  # (key, reason: new | changed | unrecorded)
    withdraw: list[str] = field(default_factory=list)  # copies no approved row names
    unfinished: list[str] = field(default_factory=list)  # copies already deleted, record left (a run died)
    missing: list[str] = field(default_factory=list)  # approved, original missing (a copy is kept if any)
    known_corrupt: list[str] = field(default_factory=list)  # refused before as corrupt, original unchanged since
    unpublishable: list[str] = field(default_factory=list)  # approved, key outside PUBLISHED_PREFIXES
    published: int = 0  # copies in the published bucket before the run
    approved: int = 0  # distinct approved keys
    refused: str | None = None


def approved_keys(conn: psycopg.Connection, *, buckets: Sequence[str]) -> set[str]:
    """Every key an approved row publishes (read on the primary: a lagging replica would
    re-publish what was just withdrawn)."""
    table, column, flag = PUBLISHED_BY
    query = references_query([(table, column)], only_where=flag)
    return {row[0] for row in conn.execute(query, {"buckets": list(buckets)})}


def _listing(provider: StorageProvider) -> dict[str, ObjectInfo]:
    return {o.key: o for prefix in PUBLISHED_PREFIXES for o in provider.iter_objects(prefix)
            if not (o.key.endswith("/") and not o.size)}


def make_plan(conn: psycopg.Connection, provider: StorageProvider, *, buckets: Sequence[str],
              max_withdrawals: int, max_share: float) -> Plan:
    published = provider.published()
    wanted = approved_keys(conn, buckets=buckets)
    originals = _listing(provider)
    copies = _listing(published)
    records = {key: (size, etag) for key, size, etag in conn.execute(
        "SELECT object_key, size, source_etag FROM csl_ops.published_objects WHERE provider = %s", (provider.name,))}
    refused = {key: (detail.get("size"), detail.get("source_etag")) for key, detail in conn.execute(
        "SELECT DISTINCT ON (object_key) object_key, detail FROM csl_ops.publication_events WHERE provider = %s "
        "AND action = 'copy_refused' ORDER BY object_key, id DESC", (provider.name,)) if detail.get("problem") == "corrupt"}
    plan = Plan(published=len(copies), approved=len(wanted))
    plan.unpublishable = sorted(k for k in wanted if not k.startswith(PUBLISHED_PREFIXES))
    publishable = wanted.difference(plan.unpublishable)
    plan.missing = sorted(publishable.difference(originals))
    for key in sorted(publishable.intersection(originals)):
        original, record = originals[key], records.get(key)
        if refused.get(key) == (original.size, original.etag):
            plan.known_corrupt.append(key)  # copied and refused before: not again until the original changes
        elif key not in copies:
            plan.publish.append((key, "new"))
        elif record is None:
            plan.publish.append((key, "unrecorded"))  # copied by a run that died before recording it
        elif record != (original.size, original.etag) or copies[key].size != original.size:
            plan.publish.append((key, "changed"))
    plan.withdraw = sorted(set(copies).difference(publishable))
    plan.unfinished = sorted(set(records).difference(copies).difference(publishable))
    if len(plan.withdraw) > max_withdrawals:
        plan.refused = (f"{len(plan.withdraw)} published samples would be withdrawn, more than "
                        f"max_withdrawals={max_withdrawals}; nothing was changed (check the dry run, then raise it)")
    elif plan.withdraw and len(plan.withdraw) > max_share * len(copies):
        plan.refused = (f"{len(plan.withdraw)} of the {len(copies)} published samples "
                        f"({len(plan.withdraw) / len(copies):.1%}) would be withdrawn, more than "
                        f"max_share={max_share:.0%}; nothing was changed (check the dry run, then raise it)")
    return plan


def _event(conn: psycopg.Connection, provider: str, key: str, action: str, run_key: str, *,
           edge_purged: bool | None, detail: dict[str, Any] | None = None) -> None:
    conn.execute("INSERT INTO csl_ops.publication_events (provider, object_key, action, run_key, edge_purged, detail) "
                 "VALUES (%s, %s, %s, %s, %s, %s)",
                 (provider, key, action, run_key, edge_purged, json.dumps(detail or {})))


def _publish(conn: psycopg.Connection, provider: StorageProvider, published: StorageProvider, key: str,
             reason: str, run_key: str, cache_policy: Any) -> dict[str, Any] | None:
    """Copy, verify, record. Returns None when published, else what was refused: ``corrupt``
    (the original's bytes do not match the SHA-256 it was stored with: never published) or
    ``copy_failed`` (the copy differs from a sound original); the copy is deleted either way."""
    head = provider.head(key)
    if head is None:
        return None  # gone since the listing: the next run sees it missing
    headers = cache_policy.for_content_type(head["content_type"])
    published.copy_from(provider, key, replace={
        "ContentType": head["content_type"] or "application/octet-stream", "CacheControl": headers.cache_control,
        "Metadata": {**head["metadata"], **headers.metadata}})
    copied = published.digest(key)
    claimed = head["metadata"].get("sha256", "")
    original = None if _SHA256.fullmatch(claimed) else provider.digest(key)
    expected = claimed if original is None else (original[0] if original else "")
    if copied is not None and copied[0] == expected:
        with conn.transaction():
            conn.execute(
                "INSERT INTO csl_ops.published_objects (provider, object_key, size, source_etag, sha256, run_key) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (provider, object_key) DO UPDATE SET "
                "size = excluded.size, source_etag = excluded.source_etag, sha256 = excluded.sha256, "
                "published_at = now(), run_key = excluded.run_key",
                (provider.name, key, head["size"], head["etag"], copied[0], run_key))
            _event(conn, provider.name, key, "published" if reason == "new" else "republished", run_key,
                   edge_purged=False, detail={"reason": reason, "sha256": copied[0]})  # the edge may hold a 404
        return None
    published.delete(key)
    if original is None:  # the original's own bytes decide whether it or the copy is wrong
        original = provider.digest(key)
    corrupt = original is not None and copied is not None and original[0] == copied[0] != claimed
    detail = {"problem": "corrupt" if corrupt else "copy_failed", "expected_sha256": expected,
              "copy_sha256": copied[0] if copied else None, "reason": reason, "size": head["size"],
              "source_etag": head["etag"]}
    with conn.transaction():
        _event(conn, provider.name, key, "copy_refused", run_key, edge_purged=None, detail=detail)
    if corrupt:
        log.warning("%s does not match the SHA-256 it was stored with (%s): not published (the integrity "
                    "sweep reports it; restore it from another provider)", key, claimed)
    else:
        log.error("copy of %s into %s does not match the original (%s): deleted, not published",
                  key, published.bucket, detail)
    return {"key": key, **detail}


def _withdraw(conn: psycopg.Connection, provider: StorageProvider, published: StorageProvider, key: str,
              run_key: str) -> None:
    published.delete(key)  # the copy; the original stays where it is
    with conn.transaction():
        conn.execute("DELETE FROM csl_ops.published_objects WHERE provider = %s AND object_key = %s",
                     (provider.name, key))
        _event(conn, provider.name, key, "withdrawn", run_key, edge_purged=False)


def _purge_owed(conn: psycopg.Connection, provider: StorageProvider, published: StorageProvider,
                edge: Any) -> dict[str, Any]:
    """Send the purges the events still owe; they stay owed when there is no edge to purge."""
    owed = conn.execute("SELECT id, object_key FROM csl_ops.publication_events WHERE provider = %s "
                        "AND edge_purged = false ORDER BY id", (provider.name,)).fetchall()
    if not owed:
        return {"owed": 0, "sent": 0, "dropped": 0}
    if edge is None:
        return {"owed": len(owed), "sent": 0, "dropped": 0, "error": "no edge configured (CDN_ENABLED false)"}
    try:
        dropped = edge.purge_objects(published.bucket, sorted({key for _, key in owed}))
    except EdgeError as exc:
        log.warning("edge purge of %s objects failed, still owed: %s", len(owed), exc)
        return {"owed": len(owed), "sent": 0, "dropped": 0, "error": str(exc)}
    with conn.transaction():
        conn.execute("UPDATE csl_ops.publication_events SET edge_purged = true WHERE id = ANY(%s)",
                     ([i for i, _ in owed],))
    return {"owed": 0, "sent": len(owed), "dropped": dropped}


def run_publication(conn: psycopg.Connection, provider: StorageProvider, *, run_key: str, dry_run: bool,
                    max_withdrawals: int = 1000, max_share: float = 0.10, edge: Any = None,
                    buckets: Sequence[str] | None = None, cache_policy: Any = None) -> PublicationResult:
    """One publication run for ``provider`` (its published bucket). ``edge`` (a ``csl.cdn.VarnishEdge``
    or None) is purged of what was withdrawn or replaced; ``cache_policy`` (``csl.cdn.headers.CachePolicy``,
    default the TTL table on the local edge) gives each copy its cache headers. Raises ``WithdrawalCapExceeded`` (nothing
    changed) unless ``dry_run``, which reports the refusal instead. What it did (or would do) is
    logged key by key (``csl.storage.publication``)."""
    if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1:
        raise PublicationError(f"max_share must be in (0, 1], got {max_share!r}")
    if isinstance(max_withdrawals, bool) or not isinstance(max_withdrawals, int):
        raise PublicationError(f"max_withdrawals: expected a whole number, got {max_withdrawals!r}")
    if max_withdrawals < 0:
        raise PublicationError(f"max_withdrawals must be >= 0, got {max_withdrawals!r}")
    published = provider.published()
    buckets = sorted({*(buckets or [provider.bucket]), published.bucket})  # URL-form values may name either
    if not dry_run:
        _lock(conn, provider.name)
    try:
        result = _run(conn, provider, published, run_key=run_key, dry_run=dry_run, buckets=buckets, edge=edge,
                      max_withdrawals=max_withdrawals, max_share=max_share, cache_policy=cache_policy)
    finally:
        if not dry_run:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, provider.name))
    result._log()
    return result


def _lock(conn: psycopg.Connection, provider: str) -> None:
    if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, provider)).fetchone()[0]:
        raise PublicationBusy(f"another publication run for provider {provider!r} holds the lock; nothing was changed")


def _run(conn: psycopg.Connection, provider: StorageProvider, published: StorageProvider, *, run_key: str,
         dry_run: bool, buckets: Sequence[str], edge: Any, max_withdrawals: int, max_share: float,
         cache_policy: Any = None) -> PublicationResult:
    from csl.cdn.headers import CachePolicy

    cache_policy = cache_policy or CachePolicy()
    plan = make_plan(conn, provider, buckets=buckets, max_withdrawals=max_withdrawals, max_share=max_share)
    if plan.refused and not dry_run:
        raise WithdrawalCapExceeded(plan.refused)
    if dry_run:
        return PublicationResult(provider=provider.name, bucket=published.bucket, dry_run=dry_run, **asdict(plan))
    copy_refused = []
    for key, reason in plan.publish:
        refused = _publish(conn, provider, published, key, reason, run_key, cache_policy)
        if refused:
            copy_refused.append(refused)
    for key in plan.withdraw:
        _withdraw(conn, provider, published, key, run_key)
    for key in plan.unfinished:  # the copy went; its record and purge did not
        with conn.transaction():
            conn.execute("DELETE FROM csl_ops.published_objects WHERE provider = %s AND object_key = %s",
                         (provider.name, key))
            _event(conn, provider.name, key, "withdrawn", run_key, edge_purged=False, detail={"finished": True})
    return PublicationResult(provider=provider.name, bucket=published.bucket, dry_run=dry_run, **asdict(plan),
                             copy_refused=copy_refused, purge=_purge_owed(conn, provider, published, edge))


@dataclass(frozen=True, kw_only=True)
class PublicationResult:
    """One provider's publication run: the plan (``Plan``'s lists and counts), the copies refused
    and the edge purges sent. ``as_dict()`` is the whole result (the CLI's ``--json``),
    ``summary()`` counts plus a bounded sample of each list (XCom and the run record)."""

    provider: str
    bucket: str
    dry_run: bool
    publish: list[tuple[str, str]] = field(default_factory=list)
    withdraw: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    known_corrupt: list[str] = field(default_factory=list)
    unpublishable: list[str] = field(default_factory=list)
    published: int = 0
    approved: int = 0
    refused: str | None = None
    copy_refused: list[dict[str, Any]] = field(default_factory=list)  # each with its problem: corrupt | copy_failed
    purge: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "bucket": self.bucket, "dry_run": self.dry_run, "publish": self.publish,
                "withdraw": self.withdraw, "unfinished": self.unfinished, "missing": self.missing,
                "known_corrupt": self.known_corrupt, "unpublishable": self.unpublishable,
                "published": self.published, "approved": self.approved, "refused": self.refused,
                "copy_refused": self.copy_refused, "purge": self.purge}

    @property
    def copy_failed(self) -> int:
        """Copies of a sound original that did not match it (deleted; a later run copies them again)."""
        return sum(1 for r in self.copy_refused if r["problem"] != "corrupt")

    def summary(self, *, sample: int = XCOM_SAMPLE) -> dict[str, Any]:
        """Counts plus the first ``sample`` keys of each list: small enough for XCom and the run record."""
        result = self.as_dict()
        out: dict[str, Any] = {k: result[k] for k in ("provider", "bucket", "dry_run", "published", "approved",
                                                      "refused", "purge")}
        for name in ("publish", "withdraw", "unfinished", "missing", "unpublishable", "copy_refused",
                     "known_corrupt"):
            out[name] = len(result[name])
            out[f"{name}_sample"] = result[name][:sample]
        out["corrupt"] = len(self.copy_refused) - self.copy_failed + len(self.known_corrupt)
        out["copy_failed"] = self.copy_failed
        out["copied"] = 0 if self.dry_run else len(self.publish) - len(self.copy_refused)
        return out

    def _log(self) -> None:
        for key, reason in self.publish:
            log.info("%s %s (%s)", "would publish" if self.dry_run else "published", key, reason)
        for key in self.withdraw:
            log.info("%s %s", "would withdraw" if self.dry_run else "withdrew", key)
        for key in self.missing:
            log.warning("approved but its original is missing: %s", key)
        for key in self.unpublishable:
            log.warning("approved but outside the published folders, not published: %s", key)
        for refused in self.copy_refused:
            log.warning("not published: %s (%s)", refused["key"], refused["problem"])
        if self.refused:
            log.warning("a real run would be refused: %s", self.refused)


@dataclass(frozen=True)
class PublicationRun:
    """A publication run over every provider that publishes: ``as_dict()`` is the XCom
    ``publication`` value and the run record's outcome (each provider's ``summary()``)."""

    results: tuple[PublicationResult, ...]
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {"providers": [r.summary() for r in self.results], "dry_run": self.dry_run}

    @property
    def error(self) -> str | None:
        """What failed, for the run record: the providers whose copies did not match, or None."""
        return "; ".join(f"provider {r.provider!r}: {r.copy_failed} copies did not match their sound original "
                         "(deleted, not published; a retry copies them again)"
                         for r in self.results if r.copy_failed) or None

    def check(self) -> None:
        """Raises ``CopiesDidNotMatch`` (transient: retried) when a copy did not match its original."""
        if self.error:
            raise CopiesDidNotMatch(self.error)


def publish_all(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, run_key: str, dry_run: bool,
                max_withdrawals: int = 1000, max_share: float = 0.10, edge: Any = None,
                buckets: Sequence[str] | None = None, cache_policy: Any = None) -> PublicationRun:
    """``run_publication`` for each of ``providers`` in turn (a refusal stops at that provider)."""
    return PublicationRun(tuple(run_publication(conn, provider, run_key=run_key, dry_run=dry_run,
                                                max_withdrawals=max_withdrawals, max_share=max_share, edge=edge,
                                                buckets=buckets, cache_policy=cache_policy)
                                for provider in providers), dry_run)
