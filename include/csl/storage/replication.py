"""Replication: every provider holds every object the database refers to, byte-identical.

A run (``csl_ops.replication_runs``) starts from one input (``mode``):

- ``queue``: the pending ``csl_ops.replication_queue`` rows (uploads that fell back);
- ``findings``: the open ``missing``, ``fallback_only``, ``checksum_mismatch`` and
  ``size_mismatch`` findings (and earlier ``replication_conflict`` ones, looked at again);
- ``diff``: a fresh comparison of a key prefix — an integrity sweep of it
  (``csl.storage.integrity``: the one diff engine), then its findings.

**Which copy is right.** Every provider of the run is asked about each key (HEAD) — but in
``diff`` mode a key the fresh sweep listed on one provider only, at the database's size, is
planned from that listing (``_from_listing``): its ``sha256`` is the source's own metadata,
read with its bytes and proven while they stream. A copy is
right when its size agrees with the database row (when the database knows it) and its bytes
hash to its own ``sha256`` metadata. Copies under suspicion (a checksum finding names them,
or the copies disagree in their metadata, or in size when the database does not know it) are
read and hashed before anything is decided; the rest are proven while they are copied. When
two copies each verify but differ, when none verifies, or when the database size matches no
copy, nothing is overwritten: a ``replication_conflict`` finding per provider names every
copy's size and hashes, and waits for a person.

**Plan, then copy.** The plan (``replication_copies``, status ``planned``) is per object and
destination: source, size, reason. ``dry_run`` stops there; ``max_objects`` / ``max_bytes``
refuse the run before anything is copied. Copies run ``concurrency`` at a time (one key per
worker, its destinations in turn), streamed and verified (``csl.storage.transfer``): a row
is ``copied`` when the bytes are written and a separate proof follows, ``verified`` when the
destination is proven; in that same transaction its queue rows become ``done`` and the
findings about that copy are resolved by the run. The record is written in batches (see
``_Copier``): a crash loses at most the batch not yet written. A rerun of the run skips what is verified, checks
in place what may have been written before a crash, and copies the rest. A provider that
cannot answer stops the run naming it; what finished stays recorded.

When a publishing provider (one with a published bucket) gets new bytes under a published
folder, a row goes into ``csl_ops.cdn_purge_queue`` for the edge.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql

from csl.db import ReadRoute
from csl.errors import BadInput, DatabaseError, ProblemFound, ProviderUnavailable, StorageError
from csl.storage.integrity import KINDS as SWEEP_KINDS
from csl.storage.integrity import (
    ListingOrderError,
    SweepOptions,
    cell_of,
    discover_cells,
    finish_sweep,
    first_finding,
    first_pages,
    inventory_connection,
    plan_shards,
    plan_sweep,
    prefix_cells,
)
from csl.storage.providers import PRIMARY, PUBLISHED_PREFIXES, StorageProvider, configured_buckets, reference_order
from csl.storage.references import REFERENCE_COLUMNS, references_query
from csl.storage.transfer import (
    DestinationNotVerified,
    MiB,
    SourceNotVerified,
    StoredObject,
    copy_object,
    head_object,
    verify_stored,
)

__all__ = [
    "CONFLICT",
    "MODES",
    "REPAIRABLE_KINDS",
    "CopiesFailed",
    "KeyDecision",
    "PlanTooLarge",
    "PlannedCopy",
    "ReplicationError",
    "ReplicationOptions",
    "ReplicationPlan",
    "ReplicationSummary",
    "ShardResult",
    "copy_shard",
    "decide",
    "finish_replication",
    "plan_replication",
    "replicate",
    "resolve_mode",
]

log = logging.getLogger("csl.storage")

MODES = ("queue", "findings", "diff")
REPAIRABLE_KINDS = ("missing", "fallback_only", "checksum_mismatch", "size_mismatch")  # the sweep's findings it repairs
CONFLICT = "replication_conflict"
DEPTH = 2  # the sweep's default cells: what copies are sharded by
FINAL = ("verified", "skipped", "conflict")
MAX_CONCURRENCY = 64
ANALYZE_AT = 500  # plan rows from which the copy's tables are ANALYZEd first (``_refresh_statistics``)


class ReplicationError(BadInput):
    """The run cannot start as asked (a bad parameter, an unknown provider)."""


class PlanTooLarge(BadInput):
    """The plan exceeds ``max_objects`` or ``max_bytes``: refused before anything is copied."""


class CopiesFailed(ProblemFound):
    """Some copies failed or were never verified: the run is marked failed (a rerun retries them)."""


# -- parameters ---------------------------------------------------------------------------
def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ReplicationError(f"{name} must be a whole number from {lo:,} to {hi:,}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ReplicationOptions:
    """A run's parameters (the DAG's Params, the CLI's flags), validated on construction."""

    mode: str = "queue"
    prefix: str = ""
    source: str | None = None
    destination: str | None = None
    max_objects: int = 10_000
    max_bytes: int = 100 * 1024 ** 3
    concurrency: int = 8
    multipart_threshold_mb: int = 8
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ReplicationError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.prefix, str) or any(c in self.prefix for c in "\x00\r\n"):
            raise ReplicationError(f"prefix must be text without control characters, got {self.prefix!r}")
        for name in ("source", "destination"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ReplicationError(f"{name} must be a provider name, got {value!r}")
        if self.source is not None and self.source == self.destination:
            raise ReplicationError(f"source and destination are both {self.source!r}")
        _whole("max_objects", self.max_objects, 1, 10_000_000)
        _whole("max_bytes", self.max_bytes, 1, 1 << 50)
        _whole("concurrency", self.concurrency, 1, MAX_CONCURRENCY)
        _whole("multipart_threshold_mb", self.multipart_threshold_mb, 5, 5 * 1024)
        if not isinstance(self.dry_run, bool):
            raise ReplicationError(f"dry_run must be true or false, got {self.dry_run!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReplicationOptions:
        """From native parameter values; None or "" means the default; unknown names are errors."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ReplicationError(f"unknown parameter(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        given = {k: v for k, v in params.items() if v is not None and v != ""}
        return cls(**given)

    @property
    def threshold(self) -> int:
        return self.multipart_threshold_mb * MiB

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_providers(self, names: Sequence[str]) -> None:
        for name in ("source", "destination"):
            value = getattr(self, name)
            if value is not None and value not in names:
                raise ReplicationError(f"{name} {value!r} is not one of the run's providers ({', '.join(names)})")


def resolve_mode(mode: str | None, *, run_type: str | None) -> str:
    """The run's input: ``mode`` when given; ``auto`` (or nothing) is ``findings`` for a run the
    findings Asset started (a sweep just found something), ``queue`` for the hourly schedule and
    manual runs."""
    if mode not in (None, "", "auto"):
        return mode
    return "findings" if run_type == "asset_triggered" else "queue"


# -- deciding one key ----------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedCopy:
    key: str
    destination: str
    source: str | None
    reason: str  # missing | fallback_only | queued | size_mismatch | checksum_mismatch | corrupt | verify
    size: int | None
    sha256: str | None
    replaces: bool  # the destination holds other bytes now
    in_place: bool = False  # the destination seems right already: prove it, copy only if that fails

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KeyDecision:
    """What to do with one key: copies (possibly none), or a conflict (nothing overwritten)."""

    key: str
    copies: tuple[PlannedCopy, ...] = ()
    conflict: str | None = None  # why no copy can be trusted
    copies_seen: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # every provider's copy
    database_size: int | None = None
    unreferenced: bool = False
    blocked: tuple[tuple[str, str], ...] = ()  # (destination, why) a copy the run's source cannot give

    def conflict_detail(self) -> dict[str, Any]:
        return {"reason": self.conflict, "database_size": self.database_size, "copies": dict(self.copies_seen)}


def decide(key: str, heads: Mapping[str, StoredObject | None], *, names: Sequence[str], referenced: bool,
           database_size: int | None, digests: Mapping[str, str] | None = None,
           named: Mapping[str, str] | None = None, sources: Sequence[str] | None = None,
           destinations: Sequence[str] | None = None) -> KeyDecision:
    """The plan for one key from every provider's HEAD (``heads``, None = not there; ``names``
    in reference order, the primary first: the preferred sources), the
    database's knowledge and the content hashes already read (``digests``: provider → sha256
    of its bytes). ``named`` are the providers an input names as needing the object (→ the
    input's reason); ``sources``/``destinations`` restrict the copying (None: any).

    Use ``needs_reading`` first: a decision over copies that should have been read is wrong."""
    digests = digests or {}
    named = named or {}
    holders = {n: h for n, h in heads.items() if h is not None}
    seen = {n: ({**h.as_dict(), **({"content_sha256": digests[n]} if n in digests else {})} if h else None)
            for n, h in heads.items()}
    base = {"key": key, "copies_seen": seen, "database_size": database_size}
    if not referenced:
        return KeyDecision(**base, unreferenced=True)
    if not holders:
        return KeyDecision(**base, conflict="no provider holds a copy")
    sized = {n for n, h in holders.items() if database_size is None or h.size == database_size}
    right = {n for n in sized if holders[n].sha256 and digests.get(n, holders[n].sha256) == holders[n].sha256}
    truths = {holders[n].sha256 for n in right}
    if len(truths) > 1:
        return KeyDecision(**base, conflict="copies that each match their own sha256 differ: "
                           + ", ".join(f"{n} {holders[n].sha256}" for n in sorted(right)))
    if not truths:
        if database_size is not None and not sized:
            why = f"the database size {database_size} matches no copy"
        else:
            why = "no copy's bytes hash to its sha256 metadata"
        return KeyDecision(**base, conflict=why)
    truth = truths.pop()
    good = [n for n in names if n in right]
    read_first = sorted(good, key=lambda n: (n not in digests, names.index(n)))  # proven first, then as given
    allowed_sources = [n for n in read_first if sources is None or n in sources]
    copies: list[PlannedCopy] = []
    blocked: list[tuple[str, str]] = []
    for dest in names:
        if destinations is not None and dest not in destinations:
            continue
        head = holders.get(dest)
        if dest in right:
            if dest not in named:
                continue  # right, and nobody asked
            reason, in_place = "verify", True  # an input says it is wrong: prove it right, then settle
        elif head is None:
            reason, in_place = named.get(dest, "missing"), False
        elif dest not in sized:
            reason, in_place = "size_mismatch", False
        elif head.sha256 != truth:
            reason, in_place = "checksum_mismatch", False
        else:
            reason, in_place = "corrupt", False  # its bytes do not hash to its metadata
        source = next((n for n in allowed_sources if n != dest), None)
        if source is None and not in_place:
            elsewhere = ", ".join(n for n in good if n != dest)
            blocked.append((dest, (f"the right copy is on {elsewhere}, not on the allowed source "
                                  f"{', '.join(sources or ())}")))
            continue
        size = holders[source].size if source else head.size if head else None
        copies.append(PlannedCopy(key=key, destination=dest, source=source, reason=reason, size=size,
                                  sha256=truth, replaces=head is not None and not in_place, in_place=in_place))
    return KeyDecision(**base, copies=tuple(copies), blocked=tuple(blocked))


def needs_reading(heads: Mapping[str, StoredObject | None], *, database_size: int | None,
                  suspects: Iterable[str] = ()) -> set[str]:
    """The copies to read and hash before ``decide``: those a checksum finding suspects, and
    every candidate when the candidates' metadata disagree (or their sizes do and the database
    cannot say which is right)."""
    holders = {n: h for n, h in heads.items() if h is not None}
    sized = {n: h for n, h in holders.items() if database_size is None or h.size == database_size}
    read = {n for n in suspects if n in holders}
    if len({h.sha256 for h in sized.values()}) > 1 or (
            database_size is None and len({h.size for h in holders.values()}) > 1):
        read |= set(sized)
    return read


# -- the plan ------------------------------------------------------------------------------
@dataclass
class _Inputs:
    queue: list[tuple[int, str]] = field(default_factory=list)  # (queue id, target)
    findings: list[tuple[int, str, str]] = field(default_factory=list)  # (finding id, kind, provider)
    queued_size: int | None = None
    listed_on: set[str] | None = None  # diff mode: the providers the sweep's listing found the key on


@dataclass(frozen=True)
class ReplicationPlan:
    """A planned run: its record, what it will copy, and the keys left for a person.
    ``as_dict()`` is the XCom ``plan`` (copies listed up to ``SHOWN``); ``shards(n)`` the
    mapped copy tasks' items."""

    SHOWN = 200

    run_id: int
    mode: str
    providers: list[str]
    copies: list[PlannedCopy]
    conflicts: list[KeyDecision]
    unreferenced: list[str]
    blocked: list[tuple[str, str, str]]  # (key, destination, why): outside the run's source
    cells: list[str]
    sweep_id: int | None
    inventory_from: str
    dry_run: bool
    quick_look: bool = False  # diff mode: the sweep's merge found nothing, no sweep was recorded

    @property
    def bytes(self) -> int:
        return sum(c.size or 0 for c in self.copies if not c.in_place)

    def totals(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for c in self.copies:
            reasons[c.reason] = reasons.get(c.reason, 0) + 1
        return {"objects": sum(1 for c in self.copies if not c.in_place), "bytes": self.bytes,
                "in_place": sum(1 for c in self.copies if c.in_place), "by_reason": reasons,
                "conflicts": len(self.conflicts), "unreferenced": len(self.unreferenced),
                "blocked": len(self.blocked)}

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "mode": self.mode, "providers": self.providers, "dry_run": self.dry_run,
                "sweep_id": self.sweep_id, "quick_look": self.quick_look, "inventory_from": self.inventory_from,
                "cells": self.cells,
                **self.totals(), "copies": [c.as_dict() for c in self.copies[:self.SHOWN]],
                "conflict_keys": [{"key": d.key, **d.conflict_detail()} for d in self.conflicts[:self.SHOWN]],
                "blocked_copies": [{"key": k, "destination": d, "why": why} for k, d, why in self.blocked[:self.SHOWN]]}

    def shards(self, count: int) -> list[dict[str, Any]]:
        """Contiguous runs of the plan's cells (as the sweep deals them out), one per copy task."""
        return [{"run_id": self.run_id, "shard": i, "cells": cells}
                for i, cells in enumerate(plan_shards(self.cells, max(1, count)))]


def _start_run(conn: Any, *, run_key: str, options: ReplicationOptions, names: Sequence[str]) -> int:
    row = conn.execute(
        "INSERT INTO csl_ops.replication_runs (run_key, mode, params, providers) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (run_key) DO UPDATE SET status = 'planning', mode = excluded.mode, params = excluded.params, "
        "providers = excluded.providers, error = NULL, finished_at = NULL RETURNING id",
        (run_key, options.mode, json.dumps(options.as_dict()), list(names))).fetchone()
    return row[0]


def _inputs(conn: Any, options: ReplicationOptions, names: Sequence[str], sweep_id: int | None) -> dict[str, _Inputs]:
    found: dict[str, _Inputs] = {}
    if options.mode == "queue":
        rows = conn.execute(
            "SELECT id, object_key, target_provider, size_bytes FROM csl_ops.replication_queue "
            "WHERE status = 'pending' AND starts_with(object_key, %s) AND target_provider = ANY(%s) ORDER BY id",
            (options.prefix, list(names))).fetchall()
        for qid, key, target, size in rows:
            entry = found.setdefault(key, _Inputs())
            entry.queue.append((qid, target))
            entry.queued_size = size
    else:
        kinds = list(REPAIRABLE_KINDS) + ([CONFLICT] if options.mode == "findings" else [])
        query = ("SELECT id, kind, object_key, provider, CASE WHEN kind = 'missing' THEN detail -> 'present_on' END "
                 "FROM csl_ops.storage_findings WHERE resolved_at IS NULL "
                 "AND kind = ANY(%(kinds)s) AND starts_with(object_key, %(prefix)s) AND depends_on <@ %(names)s "
                 + ("AND last_sweep_id = %(sweep)s " if sweep_id is not None else "") + "ORDER BY object_key, id")
        for fid, kind, key, provider, present_on in conn.execute(query, {"kinds": kinds, "prefix": options.prefix,
                                                                          "names": list(names), "sweep": sweep_id}):
            entry = found.setdefault(key, _Inputs())
            entry.findings.append((fid, kind, provider))
            if sweep_id is not None and present_on is not None:
                entry.listed_on = set(present_on)
    return found


def _from_listing(key: str, entry: _Inputs, *, names: Sequence[str], database_size: int | None,
                  options: ReplicationOptions) -> KeyDecision | None:
    """Diff mode's plan for a key the fresh sweep found on exactly one provider, at the size the
    database knows, and missing everywhere else: copy it from there, no HEADs. Its ``sha256``
    is the source's own metadata, read with its bytes and proven while they stream
    (``copy_object``); a source without it, or whose bytes betray it, is examined then.
    None when the key needs every provider's HEAD (``examine``)."""
    if entry.listed_on is None or len(entry.listed_on) != 1 or database_size is None:
        return None
    (source,) = entry.listed_on
    if any(kind != "missing" for _, kind, _ in entry.findings) or (options.source not in (None, source)):
        return None
    missing = {provider for _, _, provider in entry.findings}
    if missing != set(names) - {source}:
        return None
    copies = tuple(PlannedCopy(key=key, destination=dest, source=source, reason="missing", size=database_size,
                               sha256=None, replaces=False)
                   for dest in names if dest in missing and options.destination in (None, dest))
    return KeyDecision(key=key, copies=copies, database_size=database_size)


def _database_sizes(db: Any, keys: Sequence[str], buckets: Sequence[str]) -> tuple[dict[str, int | None], str]:
    """For each referenced key of ``keys``, the size the database knows (or None); which server
    answered: the sweep's ``inventory_connection`` (the replica once it has replayed what the
    primary had written when asked, within the lag bound; else the primary)."""
    if not keys:  # nothing to look up (a no-op rerun): where the read would go, without a snapshot for it
        return {}, db.read_route().target
    query = sql.SQL("SELECT r.key, max(r.size) FROM ({refs}) AS r JOIN unnest(%(keys)s::text[]) AS k (key) "
                    "ON k.key = r.key GROUP BY r.key").format(refs=references_query(REFERENCE_COLUMNS))
    sizes: dict[str, int | None] = {}
    with inventory_connection(db) as (conn, route):
        for start in range(0, len(keys), 50_000):
            batch = list(keys[start:start + 50_000])
            for key, size in conn.execute(query, {"keys": batch, "buckets": list(buckets)}):
                sizes[key] = size
        conn.rollback()
    return sizes, route.target


def _named(entry: _Inputs) -> tuple[dict[str, str], set[str]]:
    """The providers the inputs say need the key (→ reason) and those a checksum finding suspects."""
    named: dict[str, str] = {}
    suspects: set[str] = set()
    for _, target in entry.queue:
        named[target] = "queued"
    for _, kind, provider in entry.findings:
        if kind == "fallback_only":
            named[PRIMARY] = "fallback_only"
        elif kind == "checksum_mismatch":
            named[provider] = kind
            suspects.add(provider)
        else:
            named[provider] = kind
    return named, suspects


def examine(providers: Sequence[StorageProvider], key: str, *, referenced: bool, database_size: int | None,
            named: Mapping[str, str], suspects: Iterable[str], options: ReplicationOptions,
            read_all: bool = False) -> KeyDecision:
    """HEAD the key everywhere, read what must be read, decide."""
    by_name = {p.name: p for p in providers}
    names = [p.name for p in reference_order(providers)]
    heads = {n: head_object(by_name[n], key) for n in names}
    to_read = ({n for n, h in heads.items() if h is not None} if read_all
               else needs_reading(heads, database_size=database_size, suspects=suspects))
    digests = {}
    for name in sorted(to_read):
        got = by_name[name].digest(key)
        if got is not None:
            digests[name] = got[0]
    return decide(key, heads, names=names, referenced=referenced, database_size=database_size, digests=digests,
                  named=named, sources=[options.source] if options.source else None,
                  destinations=[options.destination] if options.destination else None)


def plan_replication(db: Any, providers: Sequence[StorageProvider], *, run_key: str, options: ReplicationOptions,
                     buckets: Sequence[str] = ()) -> ReplicationPlan:
    """Open (or reopen) the run, gather its input, decide every key and record the plan.
    Refuses (``PlanTooLarge``, the run marked ``refused``) when the copies exceed the caps;
    a ``dry_run`` ends here (``dry_run``). Conflicts are written as findings even in a dry run:
    they are what was found, not something done."""
    providers = reference_order(providers)
    names = [p.name for p in providers]
    if len(names) < 2:
        raise ReplicationError(f"replication needs at least two providers, got {names}")
    options.check_providers(names)
    buckets = list(buckets) or sorted({p.bucket for p in providers})
    sweep_id = quick = None
    with db.connection() as conn:
        run_id = _start_run(conn, run_key=run_key, options=options, names=names)
    if options.mode == "diff":
        quick = _quick_look(db, providers, run_id=run_id, run_key=run_key, options=options, buckets=buckets)
        if quick is None:
            sweep_id = _diff(db, providers, run_key=run_key, options=options, buckets=buckets)
    if quick is not None:  # nothing is owed: no input, nothing to look up
        inputs, keys, sizes, inventory_from = {}, [], {}, quick.target
    else:
        with db.connection() as conn:
            inputs = _inputs(conn, options, names, sweep_id)
        keys = sorted(inputs)
        sizes, inventory_from = _database_sizes(db, keys, buckets)

    def one(key: str) -> KeyDecision:
        named, suspects = _named(inputs[key])
        size = sizes.get(key, inputs[key].queued_size)
        return examine(providers, key, referenced=key in sizes, database_size=size, named=named, suspects=suspects,
                       options=options)

    listed = {key: _from_listing(key, inputs[key], names=names, database_size=sizes.get(key), options=options)
              for key in keys if key in sizes}
    to_examine = [key for key in keys if listed.get(key) is None]
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="csl-plan") as pool:
        examined = dict(zip(to_examine, pool.map(one, to_examine), strict=True))
    decisions = [listed.get(key) or examined[key] for key in keys]
    copies = [c for d in decisions for c in d.copies]
    conflicts = [d for d in decisions if d.conflict]
    unreferenced = [d.key for d in decisions if d.unreferenced]
    blocked = [(d.key, dest, why) for d in decisions for dest, why in d.blocked]
    cells = sorted({cell_of(c.key, DEPTH) for c in copies})
    plan = ReplicationPlan(run_id=run_id, mode=options.mode, providers=names, copies=copies, conflicts=conflicts,
                           unreferenced=unreferenced, blocked=blocked, cells=cells, sweep_id=sweep_id,
                           inventory_from=inventory_from, dry_run=options.dry_run, quick_look=quick is not None)
    totals = plan.totals()
    refusal = None
    if totals["objects"] > options.max_objects:
        refusal = f"the plan copies {totals['objects']:,} objects, more than max_objects {options.max_objects:,}"
    elif totals["bytes"] > options.max_bytes:
        refusal = f"the plan copies {totals['bytes']:,} bytes, more than max_bytes {options.max_bytes:,}"
    status = "refused" if refusal else "dry_run" if options.dry_run else "planned"
    with db.connection() as conn, conn.transaction():
        _write_conflicts(conn, run_id, names, conflicts)
        if not refusal and not options.dry_run:
            _write_plan(conn, run_id, decisions, inputs)
            _settle_unreferenced(conn, run_id, unreferenced, inputs)
        # a quick look records no sweep: a rerun keeps the one an earlier attempt's plan came from
        conn.execute("UPDATE csl_ops.replication_runs SET status = %s, sweep_id = coalesce(%s, sweep_id), "
                     "inventory_from = %s, "
                     "summary = %s, error = %s, finished_at = CASE WHEN %s THEN now() END WHERE id = %s",
                     (status, sweep_id, inventory_from, json.dumps({"plan": totals, "quick_look": quick is not None}),
                      refusal,
                      status in ("refused", "dry_run"), run_id))
    if status == "planned" and len(copies) >= ANALYZE_AT:
        _refresh_statistics(db)
    log.info("replication run %s (%s): %s", run_id, options.mode, totals)
    if refusal:
        raise PlanTooLarge(f"{refusal}: nothing copied (raise the cap, or narrow the prefix)")
    return plan


def _refresh_statistics(db: Any) -> None:
    """ANALYZE the tables the copy settles against. A diff sweep or a plan can write thousands
    of open findings and plan rows within seconds, before autovacuum has looked at them; planned
    from the statistics of the table as it was (often: empty), each batch's settling scans every
    open finding once per copy row (0.1–0.2 s a batch at 5,000 open findings, measured), where
    with statistics it is a few index probes (~5 ms). Without the privilege to ANALYZE, the
    server only warns, and the plans are what they would have been."""
    started = time.perf_counter()
    with db.connection() as conn:
        conn.execute("ANALYZE csl_ops.storage_findings, csl_ops.replication_copies")
        conn.commit()
    log.debug("statistics refreshed in %.3f s", time.perf_counter() - started)


def _quick_look(db: Any, providers: Sequence[StorageProvider], *, run_id: int, run_key: str,
                options: ReplicationOptions, buckets: Sequence[str]) -> ReadRoute | None:
    """Diff mode's no-op check: the sweep's own merge of the prefix (``first_finding``: the same
    inventory, listings and classifier, the inventory where a sweep would read it) that records
    nothing and stops at the first finding. It answers only when a full diff could not do more:
    no open finding under the prefix about the run's providers (a sweep would have to close
    or recheck it), no unfinished row of this run (a rerun must check what a crash left), and
    the merge finds nothing. Then nothing is owed and no sweep is recorded; returns where the
    inventory was read. None sends the run to the full diff (``_diff``), also when a provider
    or the replica fails here: the full diff reports that as it always does."""
    names = [p.name for p in providers]
    sweep_options = _diff_options(options, buckets)
    started = time.perf_counter()
    cells = prefix_cells(sweep_options)
    early = ThreadPoolExecutor(max_workers=len(providers), thread_name_prefix="csl-list")
    try:
        # a folder prefix's listing starts now: the servers list while the database is asked
        pages = first_pages(early, providers, cells[0], sweep_options) if cells else None
        with db.connection() as conn:
            # the open findings a full diff would close, refresh or recheck (a sweep of these
            # providers judges those that depend on them alone, and downloads every copy a
            # checksum finding names); and what an earlier attempt of the run left unfinished
            busy = conn.execute(
                "SELECT EXISTS (SELECT FROM csl_ops.storage_findings WHERE resolved_at IS NULL "
                "AND starts_with(object_key, %(prefix)s) AND ((kind = ANY(%(kinds)s) AND depends_on <@ %(names)s) "
                "OR (kind = 'checksum_mismatch' AND provider = ANY(%(names)s)))) OR EXISTS "
                "(SELECT FROM csl_ops.replication_copies WHERE run_id = %(run)s AND status <> ALL(%(final)s))",
                {"prefix": options.prefix, "kinds": list(SWEEP_KINDS), "names": names, "run": run_id,
                 "final": list(FINAL)}).fetchone()[0]
        if busy:
            return None
        if cells is None:
            with db.connection() as conn:
                cells = discover_cells(conn, providers, sweep_options)
        with inventory_connection(db) as (read_conn, route):
            found = first_finding(read_conn, route, providers, cells, sweep_options, salt=run_key, started=pages)
            read_conn.rollback()
    except (StorageError, ListingOrderError, DatabaseError) as exc:
        log.info("replication run %s: the quick look failed (%s); the full diff follows", run_id, exc)
        return None
    finally:
        early.shutdown(wait=False, cancel_futures=True)  # a page nobody waits for ends on its own
    if found is not None:
        log.debug("replication run %s: the quick look found %s; the full diff follows", run_id, found)
        return None
    log.info("replication run %s: nothing owed under %r: the listings of %s agree with the inventory (from the %s, "
             "%s cells, %.3f s)", run_id, options.prefix, ", ".join(names), route.target, len(cells),
             time.perf_counter() - started)
    return route


def _diff_options(options: ReplicationOptions, buckets: Sequence[str]) -> SweepOptions:
    """The sweep a diff runs (and its quick look merges as): the prefix at ``_diff_depth``, no
    download sample (``deep_rate`` 0: the quick look's salt, unlike a sweep's id, picks none)."""
    return SweepOptions(prefix=options.prefix, buckets=tuple(buckets), depth=_diff_depth(options.prefix))


def _diff_depth(prefix: str) -> int:
    """The diff sweep's cell depth: the prefix's own folder is one cell, listed as one range per
    provider (``bench-many/`` → 1: a page per 1,000 keys, not a listing per sub-folder). Cells
    only group the sweep's work: a finding seen again takes its new cell, and the ones under the
    prefix not seen again are closed, whatever depth found them."""
    return min(8, max(1, prefix.count("/")))


def _diff(db: Any, providers: Sequence[StorageProvider], *, run_key: str, options: ReplicationOptions,
          buckets: Sequence[str]) -> int:
    """A fresh sweep of the prefix over the run's providers: the sweep's own merge and findings."""
    from csl.storage.integrity import sweep_and_record

    sweep_options = _diff_options(options, buckets)
    with db.connection() as conn:
        sweep = plan_sweep(conn, providers, run_key=f"{run_key}__diff", shards=1, options=sweep_options)
    for item in sweep.shards():
        sweep_and_record(db, providers, item, options=sweep_options)
    with db.connection() as conn:
        finish_sweep(conn, sweep_id=sweep.sweep_id, shards=len(sweep.shard_cells), all_cells=sweep.cells,
                     options=sweep_options).check()
    return sweep.sweep_id


def _write_conflicts(conn: Any, run_id: int, names: Sequence[str], conflicts: Sequence[KeyDecision]) -> None:
    for d in conflicts:
        detail = json.dumps(d.conflict_detail())
        for name in names:
            conn.execute(
                "INSERT INTO csl_ops.storage_findings AS f (kind, object_key, provider, cell, detail, depends_on, "
                "last_replication_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (kind, object_key, provider) WHERE resolved_at IS NULL DO UPDATE SET "
                "detail = excluded.detail, last_seen_at = now(), last_replication_id = excluded.last_replication_id",
                (CONFLICT, d.key, name, cell_of(d.key, DEPTH), detail, sorted(names), run_id))


def _write_plan(conn: Any, run_id: int, decisions: Sequence[KeyDecision], inputs: Mapping[str, _Inputs]) -> None:
    """The plan's rows. On a rerun of the run, a row an earlier attempt verified (or proved in
    place) stays as it is, and one it left unfinished that the new plan no longer needs (its
    key was settled since) is dropped: only what this plan copies can keep the run open."""
    planned = [(d.key, c.destination) for d in decisions for c in d.copies]
    dropped = conn.execute(
        "DELETE FROM csl_ops.replication_copies WHERE run_id = %s AND status <> ALL(%s) "
        "AND (object_key, destination) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        (run_id, list(FINAL), [k for k, _ in planned], [d for _, d in planned])).rowcount
    if dropped:
        log.info("replication run %s: %s unfinished rows of an earlier attempt are no longer needed", run_id, dropped)
    rows = []
    for d in decisions:
        entry = inputs[d.key]
        for c in d.copies:
            queue_ids = [q for q, target in entry.queue if target == c.destination]
            finding_ids = [f for f, kind, provider in entry.findings
                           if provider == c.destination or (kind == "fallback_only" and c.destination == PRIMARY)]
            rows.append((run_id, d.key, cell_of(d.key, DEPTH), c.source, c.destination, c.reason, c.size, c.sha256,
                         c.replaces, "planned", queue_ids, finding_ids))
    with conn.cursor() as cur:  # one pipeline of statements, not a round trip per row
        cur.executemany(
            "INSERT INTO csl_ops.replication_copies (run_id, object_key, cell, source, destination, reason, bytes, "
            "sha256, replaces, status, queue_ids, finding_ids) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id, object_key, destination) DO UPDATE SET source = excluded.source, "
            "reason = excluded.reason, bytes = excluded.bytes, sha256 = excluded.sha256, "
            "replaces = excluded.replaces OR replication_copies.replaces, queue_ids = excluded.queue_ids, "
            "finding_ids = excluded.finding_ids, updated_at = now(), "
            "status = CASE WHEN replication_copies.status IN ('verified', 'skipped') "
            "THEN replication_copies.status ELSE excluded.status END", rows)


def _settle_unreferenced(conn: Any, run_id: int, keys: Sequence[str], inputs: Mapping[str, _Inputs]) -> None:
    """Queue rows for objects nothing refers to any more are not copied: failed, saying why."""
    ids = [q for key in keys for q, _ in inputs[key].queue]
    if ids:
        conn.execute("UPDATE csl_ops.replication_queue SET status = 'failed', attempts = attempts + 1, "
                     "last_error = 'no longer referenced by the database: not replicated', resolved_run_id = %s "
                     "WHERE id = ANY(%s) AND status = 'pending'", (run_id, ids))


# -- copying -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    id: int
    key: str
    source: str | None
    destination: str
    reason: str
    size: int | None
    sha256: str | None
    replaces: bool
    status: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class ShardResult:
    """One copy task's work (``as_dict()``: the XCom ``copies``)."""

    run_id: int
    shard: int
    keys: int
    verified: int
    skipped: int
    failed: int
    conflicts: int
    bytes: int
    duration_s: float
    errors: list[str]
    stopped_by: str | None = None  # the provider that could not answer

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Finished:
    """A row proven (``verified``, or ``skipped``: right in place), waiting to be written."""

    row: _Row
    status: str
    verified_by: str
    method: str | None
    source: str | None
    sha256: str | None
    bytes: int
    duration_s: float


class _Copier:
    """Copies one run's planned rows (``rows``, in the order the workers take them), a key at a
    time per worker.

    The database work is batched. Before a row is copied its attempt is recorded, ``claim``
    rows at a time ahead of the workers (a rerun after a crash proves in place whatever an
    attempt may have written). Proven rows are written ``settle`` at a time, or after
    ``SETTLE_AFTER_S``, in one transaction each: their status, their queue rows ``done``, the
    findings they settle resolved, edge purges queued. A crash loses at most the rows not yet
    written, which the rerun proves in place. Failures and conflicts are written at once."""

    SETTLE_AFTER_S = 0.2

    def __init__(self, db: Any, providers: Sequence[StorageProvider], run_id: int, run_key: str,
                 options: ReplicationOptions, edge_base_url: str | None, rows: Sequence[_Row]) -> None:
        self.db = db
        self.by_name = {p.name: p for p in providers}
        self.providers = reference_order(providers)
        self.run_id = run_id
        self.run_key = run_key
        self.options = options
        self.edge_base_url = edge_base_url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"verified": 0, "skipped": 0, "failed": 0, "conflict": 0, "bytes": 0}
        self.errors: list[str] = []
        self.unavailable: ProviderUnavailable | None = None
        self.claim = max(16, 8 * options.concurrency)
        self.settle = max(8, 4 * options.concurrency)
        self._ids = [r.id for r in rows]
        self._position = {r.id: i for i, r in enumerate(rows)}
        self._claimed = 0
        self._claim_lock = threading.Lock()
        self._finished: list[_Finished] = []
        self._oldest = 0.0

    def _count(self, status: str, size: int = 0, error: str | None = None) -> None:
        with self.lock:
            self.counts[status] += 1
            self.counts["bytes"] += size
            if error and len(self.errors) < 50:
                self.errors.append(error)

    def _update(self, row: _Row, **values: Any) -> None:
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k))
                                         for k in values)
        with self.db.connection() as conn:
            conn.execute(sql.SQL("UPDATE csl_ops.replication_copies SET {}, updated_at = now() WHERE id = %(id)s")
                         .format(assignments), {**values, "id": row.id})

    def _claim(self, row: _Row) -> None:
        """Record the attempt on ``row`` (and on the next rows, in one statement) before it starts."""
        with self._claim_lock:
            at = self._position[row.id]
            if at < self._claimed:
                return
            upto = max(at + 1, min(len(self._ids), self._claimed + self.claim))
            ids, self._claimed = self._ids[self._claimed:upto], upto
            with self.db.connection() as conn:
                conn.execute("UPDATE csl_ops.replication_copies SET attempts = attempts + 1, updated_at = now() "
                             "WHERE id = ANY(%s)", (ids,))

    def key(self, rows: Sequence[_Row]) -> None:
        for row in rows:
            if self.stop.is_set():
                return
            try:
                self.row(row)
            except ProviderUnavailable as exc:
                self._update(row, status="failed", error=str(exc)[:2000])
                self._count("failed", error=f"{row.key} → {row.destination}: {exc}")
                with self.lock:
                    self.unavailable = self.unavailable or exc
                self.stop.set()
                return
            except (StorageError, DestinationNotVerified) as exc:
                self._update(row, status="failed", error=str(exc)[:2000])
                self._count("failed", error=f"{row.key} → {row.destination}: {exc}")

    def row(self, row: _Row) -> None:
        started = time.perf_counter()
        self._claim(row)
        dest = self.by_name[row.destination]
        earlier = row.reason == "verify" or row.attempts > 0 or row.status != "planned"
        if earlier and row.sha256 is not None:
            # an earlier attempt may have written it, or the plan says it is right: prove it in place
            # (a row planned from the listing alone has no sha256 yet: it is simply copied again)
            try:
                how = verify_stored(dest, row.key, sha256=row.sha256, size=row.size, method="existing")
            except DestinationNotVerified:
                pass
            else:
                self._finish(_Finished(row, "skipped", how, None, None, None, 0, time.perf_counter() - started))
                return
        source, truth = row.source, row.sha256
        for _ in range(2):  # the planned source, then (if its bytes do not verify) a re-examined one
            if source is None:
                self._conflict(row, "no provider holds a copy that verifies")
                return
            def copied(method: str, size: int, source: str = source) -> None:
                self._update(row, status="copied", method=method, bytes=size, source=source)

            try:
                outcome = copy_object(self.by_name[source], dest, row.key, sha256=truth,
                                      threshold=self.options.threshold, on_copied=copied)
            except SourceNotVerified as exc:
                log.warning("replication run %s: %s; looking at every copy again", self.run_id, exc)
                decision = examine(self.providers, row.key, referenced=True, database_size=row.size, named={},
                                   suspects=(), options=self.options, read_all=True)
                if decision.conflict:
                    self._conflict(row, decision.conflict, decision)
                    return
                planned = next((c for c in decision.copies if c.destination == row.destination), None)
                if planned is None:  # the destination turned out right after all
                    self._finish(_Finished(row, "skipped", "reread", None, None, None, 0,
                                           time.perf_counter() - started))
                    return
                source, truth = planned.source, planned.sha256
                continue
            self._finish(_Finished(row, "verified", outcome.verified_by, outcome.method, source, outcome.sha256,
                                   outcome.bytes, time.perf_counter() - started))
            return
        self._conflict(row, "the copies changed while they were read")

    def _finish(self, done: _Finished) -> None:
        now = time.monotonic()
        with self.lock:
            if not self._finished:
                self._oldest = now
            self._finished.append(done)
            if len(self._finished) < self.settle and now - self._oldest < self.SETTLE_AFTER_S:
                return
            batch, self._finished = self._finished, []
        self._settle(batch)

    def flush(self) -> None:
        """Write the proven rows still waiting (the end of a shard, or a stop)."""
        with self.lock:
            batch, self._finished = self._finished, []
        if batch:
            self._settle(batch)

    def _settle(self, batch: Sequence[_Finished]) -> None:
        ids = [f.row.id for f in batch]
        with self.db.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE csl_ops.replication_copies c SET status = v.status, verified_by = v.verified_by, "
                "method = coalesce(v.method, c.method), source = coalesce(v.source, c.source), "
                "sha256 = coalesce(v.sha256, c.sha256), bytes = CASE WHEN v.method IS NULL THEN c.bytes "
                "ELSE v.bytes END, duration_s = v.duration_s, error = NULL, updated_at = now() "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
                "%s::float8[]) AS v (id, status, verified_by, method, source, sha256, bytes, duration_s) "
                "WHERE c.id = v.id",
                (ids, [f.status for f in batch], [f.verified_by for f in batch], [f.method for f in batch],
                 [f.source for f in batch], [f.sha256 for f in batch], [f.bytes for f in batch],
                 [round(f.duration_s, 3) for f in batch]))
            conn.execute("UPDATE csl_ops.replication_queue q SET status = 'done', done_at = now(), "
                         "resolved_run_id = %s, attempts = q.attempts + 1, last_error = NULL "
                         "FROM csl_ops.replication_copies c WHERE c.id = ANY(%s) AND q.id = ANY(c.queue_ids) "
                         "AND q.status = 'pending'", (self.run_id, ids))
            _settle_findings(conn, self.run_id, ids)
            for f in batch:
                dest = self.by_name[f.row.destination]
                if f.method is not None and dest.settings.published_bucket and f.row.key.startswith(PUBLISHED_PREFIXES):
                    _enqueue_purge(conn, dest, f.row.key, reason="replaced" if f.row.replaces else "restored",
                                   run_key=self.run_key, edge_base_url=self.edge_base_url)
        for f in batch:
            self._count(f.status, f.bytes if f.method is not None else 0)

    def _conflict(self, row: _Row, why: str, decision: KeyDecision | None = None) -> None:
        names = [p.name for p in self.providers]
        decision = decision or KeyDecision(key=row.key, conflict=why)
        with self.db.connection() as conn, conn.transaction():
            conn.execute("UPDATE csl_ops.replication_copies SET status = 'conflict', error = %s, updated_at = now() "
                         "WHERE id = %s", (why[:2000], row.id))
            _write_conflicts(conn, self.run_id, names, [decision])
        self._count("conflict", error=f"{row.key}: {why}")


def _enqueue_purge(conn: Any, provider: StorageProvider, key: str, *, reason: str, run_key: str,
                   edge_base_url: str | None) -> None:
    from csl.cdn.queue import edge_tags, enqueue_purge, public_url

    bucket = provider.settings.published_bucket
    enqueue_purge(conn, provider=provider.name, key=key, url=public_url(edge_base_url, key),
                  tags=edge_tags(bucket, key), reason=reason, source_run=run_key)


def _settle_findings(conn: Any, run_id: int, row_ids: Sequence[int]) -> int:
    """The findings verified copies (``row_ids``) settle, resolved by the run: those each plan row
    started from, and any other open one about its destination's copy of the key (missing, size
    or checksum mismatch, an earlier conflict; ``fallback_only`` when the destination is the
    primary). Findings about the key's other providers stay until their own copies are proven.
    Each part is looked up by an index (the open findings' unique key, the id): the table keeps
    every finding ever closed, and a scan of it per batch would grow with it."""
    return conn.execute(
        "UPDATE csl_ops.storage_findings f SET resolved_at = now(), resolved_replication_id = %(run)s "
        "WHERE f.resolved_at IS NULL AND f.id IN ("
        " SELECT unnest(c.finding_ids) FROM csl_ops.replication_copies c WHERE c.id = ANY(%(rows)s)"
        " UNION SELECT o.id FROM csl_ops.replication_copies c JOIN csl_ops.storage_findings o"
        "  ON o.resolved_at IS NULL AND o.kind = ANY(%(kinds)s) AND o.object_key = c.object_key"
        "  AND o.provider = c.destination WHERE c.id = ANY(%(rows)s)"
        " UNION SELECT o.id FROM csl_ops.replication_copies c JOIN csl_ops.storage_findings o"
        "  ON o.resolved_at IS NULL AND o.kind = 'fallback_only' AND o.object_key = c.object_key"
        "  WHERE c.id = ANY(%(rows)s) AND c.destination = %(primary)s)",
        {"run": run_id, "rows": list(row_ids), "kinds": [*REPAIRABLE_KINDS, CONFLICT], "primary": PRIMARY}).rowcount


def copy_shard(db: Any, providers: Sequence[StorageProvider], item: Mapping[str, Any], *,
               options: ReplicationOptions, edge_base_url: str | None = None) -> ShardResult:
    """Copy and verify the planned rows of one shard item (``{"run_id", "shard", "cells"}``)
    that are not final yet, ``options.concurrency`` keys at a time. A provider that cannot
    answer stops the shard (``ProviderUnavailable``, raised after the work in flight is recorded)."""
    run_id, cells = item["run_id"], list(item["cells"])
    started = time.perf_counter()
    with db.connection() as conn:
        run = conn.execute("SELECT run_key, status FROM csl_ops.replication_runs WHERE id = %s", (run_id,)).fetchone()
        if run is None or run[1] not in ("planned", "copying", "failed", "done"):
            raise ReplicationError(f"replication run {run_id} has no plan to copy (status {run[1] if run else None})")
        conn.execute("UPDATE csl_ops.replication_runs SET status = 'copying' WHERE id = %s", (run_id,))
        rows = [_Row(*r) for r in conn.execute(
            "SELECT id, object_key, source, destination, reason, bytes, sha256, replaces, status, attempts "
            "FROM csl_ops.replication_copies WHERE run_id = %s AND cell = ANY(%s) AND status <> ALL(%s) "
            "ORDER BY object_key, destination", (run_id, cells, list(FINAL)))]
    missing = sorted(({r.source for r in rows if r.source} | {r.destination for r in rows})
                     - {p.name for p in providers})
    if missing:
        raise ReplicationError(f"run {run_id} was planned with providers {missing} this task does not have")
    by_key: dict[str, list[_Row]] = {}
    for row in rows:
        by_key.setdefault(row.key, []).append(row)
    copier = _Copier(db, providers, run_id, run[0], options, edge_base_url, rows)
    try:
        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="csl-copy") as pool:
            list(pool.map(copier.key, by_key.values()))
    finally:
        copier.flush()
    c = copier.counts
    result = ShardResult(run_id=run_id, shard=item.get("shard", 0), keys=len(by_key), verified=c["verified"],
                         skipped=c["skipped"], failed=c["failed"], conflicts=c["conflict"], bytes=c["bytes"],
                         duration_s=round(time.perf_counter() - started, 3), errors=copier.errors,
                         stopped_by=copier.unavailable.provider if copier.unavailable else None)
    log.info("replication run %s shard %s: %s", run_id, result.shard, result.as_dict())
    if copier.unavailable is not None:
        raise copier.unavailable
    return result


# -- the end of a run ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReplicationSummary:
    """A finished run (``as_dict()``: the XCom ``summary``, the run record, ``--json``)."""

    run_id: int
    mode: str
    status: str
    providers: list[str]
    planned: int
    verified: int
    skipped: int
    failed: int
    not_done: int
    conflicts: int
    bytes: int
    by_method: dict[str, int]
    by_verification: dict[str, int]
    failures: list[dict[str, Any]]
    conflict_keys: list[str]
    inventory_from: str | None
    sweep_id: int | None
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [(f"replication run {self.run_id} ({self.mode}, providers {', '.join(self.providers)}): "
                  f"{self.verified} copied and verified ({self.bytes:,} bytes; {self.by_method or 'none'}), "
                  f"{self.skipped} already right (proven in place), {self.failed} failed, "
                  f"{self.conflicts} conflicts left for a person; inventory from {self.inventory_from}")]
        lines += [f"  FAILED {f['key']} → {f['destination']}: {f['error']}" for f in self.failures[:20]]
        lines += [f"  CONFLICT {key}" for key in self.conflict_keys[:20]]
        return "\n".join(lines)

    def check(self) -> None:
        """``CopiesFailed`` when a copy failed or was never finished."""
        if self.failed or self.not_done:
            raise CopiesFailed(f"replication run {self.run_id}: {self.failed} copies failed and {self.not_done} "
                               "never finished (a rerun retries them): "
                               + "; ".join(f"{f['key']} → {f['destination']}: {f['error']}"
                                           for f in self.failures[:5]))


def finish_replication(conn: Any, run_id: int) -> ReplicationSummary:
    """Sum the run up: it is ``done`` when every planned row is final (a conflict is final: it
    waits for a person), else ``failed``."""
    run = conn.execute("SELECT mode, providers, inventory_from, sweep_id, status, "
                       "extract(epoch FROM clock_timestamp() - started_at) FROM csl_ops.replication_runs "
                       "WHERE id = %s", (run_id,)).fetchone()
    if run is None:
        raise ReplicationError(f"no replication run {run_id}")
    counts = dict(conn.execute("SELECT status, count(*) FROM csl_ops.replication_copies WHERE run_id = %s "
                               "GROUP BY status", (run_id,)).fetchall())
    by_method = dict(conn.execute("SELECT method, count(*) FROM csl_ops.replication_copies WHERE run_id = %s "
                                  "AND status = 'verified' GROUP BY method", (run_id,)).fetchall())
    by_verification = dict(conn.execute("SELECT verified_by, count(*) FROM csl_ops.replication_copies "
                                        "WHERE run_id = %s AND verified_by IS NOT NULL GROUP BY verified_by",
                                        (run_id,)).fetchall())
    copied = conn.execute("SELECT coalesce(sum(bytes), 0) FROM csl_ops.replication_copies WHERE run_id = %s "
                          "AND status = 'verified'", (run_id,)).fetchone()[0]
    failures = [{"key": k, "destination": d, "error": e} for k, d, e in conn.execute(
        "SELECT object_key, destination, coalesce(error, 'never finished') FROM csl_ops.replication_copies "
        "WHERE run_id = %s AND status IN ('failed', 'planned', 'copied') ORDER BY object_key LIMIT 50", (run_id,))]
    conflict_keys = [k for (k,) in conn.execute(
        "SELECT DISTINCT object_key FROM csl_ops.storage_findings WHERE kind = %s AND resolved_at IS NULL "
        "AND last_replication_id = %s ORDER BY object_key LIMIT 200", (CONFLICT, run_id))]
    not_done = counts.get("planned", 0) + counts.get("copied", 0)
    failed = counts.get("failed", 0)
    status = run[4] if run[4] in ("dry_run", "refused") else ("failed" if failed or not_done else "done")
    summary = ReplicationSummary(
        run_id=run_id, mode=run[0], status=status, providers=list(run[1]), planned=sum(counts.values()),
        verified=counts.get("verified", 0), skipped=counts.get("skipped", 0), failed=failed, not_done=not_done,
        conflicts=len(conflict_keys), bytes=int(copied), by_method=by_method, by_verification=by_verification,
        failures=failures, conflict_keys=conflict_keys, inventory_from=run[2], sweep_id=run[3],
        duration_s=round(float(run[5]), 3))
    conn.execute("UPDATE csl_ops.replication_runs SET status = %s, summary = coalesce(summary, '{}') || %s, "
                 "finished_at = now() WHERE id = %s", (status, json.dumps(summary.as_dict()), run_id))
    log.info("%s", summary.format())
    return summary


def replicate(settings: Any, *, run_key: str, options: ReplicationOptions,
              provider_names: Iterable[str] | None = None,
              on_plan: Callable[[ReplicationPlan], None] | None = None) -> tuple[ReplicationPlan, ReplicationSummary | None]:
    """A whole run without Airflow (the CLI, the benchmark): plan, copy, finish. Returns the
    plan and, unless it was a dry run, the summary (``check()`` it)."""
    from csl.db import Database
    from csl.storage.providers import providers_for

    providers = providers_for(settings, provider_names, max_pool_connections=max(32, options.concurrency * 2))
    with Database(settings.require_database(), max_pool_size=options.concurrency + 2) as db:
        plan = plan_replication(db, providers, run_key=run_key, options=options, buckets=configured_buckets(settings))
        if on_plan is not None:
            on_plan(plan)
        if options.dry_run:
            return plan, None
        try:
            if plan.copies:
                from csl.cdn.queue import published_base_url

                copy_shard(db, providers, {"run_id": plan.run_id, "shard": 0, "cells": plan.cells}, options=options,
                           edge_base_url=published_base_url(settings))
        finally:
            with db.connection() as conn:
                summary = finish_replication(conn, plan.run_id)
    return plan, summary
