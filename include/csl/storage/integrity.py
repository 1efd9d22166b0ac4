"""Storage integrity sweep: what the database refers to vs. what every provider really holds.

The key space is cut into **cells** by key prefix: a key deeper than ``depth`` segments
belongs to the subtree cell of its first ``depth`` segments (``samples/0a/``); a shallower key
to the *loose* cell of its folder (``samples/*``, ``*`` at the root). Cells come from the
database and from delimiter listings of every provider, and are dealt out to shards.

A shard sweeps its cells one at a time: the database inventory of the cell (a server-side
cursor) and each provider's listing of the cell (1,000-key pages) are read **in one key order
and merged in one streaming pass**, so memory does not grow with the bucket. That merge order
is ``SweepOptions.key_order`` ("path" by default); the database is queried in it. Each
provider's listing is checked against the order the provider declares
(``StorageProviderSettings.listing_order``, ``csl.storage.keyorder``): a listing that breaks
its own order stops the shard with ``ListingOrderError`` naming the provider rather than
produce false findings. A provider that lists in the other order (AWS S3 beside SeaweedFS) has
each cell's listing brought into the merge order by a bounded external sort (in memory up to
``keyorder.SORT_BUFFER`` entries, then sorted runs spilled to ``TMPDIR``); where the orders
agree the listing streams straight into the merge.

The inventory is read on the replica when ``csl.db`` routes reads there (healthy, within the
lag bound) and the replica replays, within that bound, everything the primary had committed
when the shard started (``inventory_connection``: its snapshot then holds it); else on the
primary. Findings are always written on the primary. Each shard records which database served
it (``inventory_from``), the sweep counts them.

The database side is every reference column of ``csl.storage.references`` (samples, generation
results, avatars), URL-form values normalised to keys. Findings
(``csl_ops.storage_findings``): ``missing`` (a referenced object a provider lacks),
``orphan`` (an object nothing refers to), ``size_mismatch`` (against the database, or against
the reference copy when the database does not know the size), ``checksum_mismatch`` (content
that differs from its own SHA-256 metadata, or metadata that differs from the reference copy)
and ``fallback_only`` (the primary lacks it, another provider holds it). The reference copy is
the ``primary`` role's (``csl.storage.reference_order``), never the first provider someone
typed; a sweep without the primary reports no ``fallback_only``. Objects whose ETags disagree
between providers, a deterministic sample (``deep_rate``) and every open checksum finding are
downloaded and hashed, so a corrupt object whose metadata still looks right is caught.

Findings are staged while the shard runs and written in one transaction at its end. Each
finding records the providers it depends on (its own, plus the reference copy it was compared
with); open findings of the shard's cells that were not seen again are closed only when the
sweep listed every provider they depend on, so sweeping some providers never closes the
others' findings. A provider that is down fails the shard, naming the provider, and writes
nothing: it never turns into false ``missing`` rows. The sweep never deletes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from csl.config import LISTING_ORDERS
from csl.db import ReadRoute
from csl.errors import BadInput, DatabaseError, ProblemFound, ReplicaUnavailable, StorageError
from csl.sqlfiles import load
from csl.storage import (
    PRIMARY,
    RESERVED_PREFIXES,
    ObjectInfo,
    StorageProvider,
    configured_buckets,
    providers_for,
    reference_order,
)
from csl.storage.keyorder import ExternalSort, ListingOrderError, in_order, order_key
from csl.storage.references import REFERENCE_COLUMNS, references_query

__all__ = [
    "DEFAULT_EXCLUDE",
    "KEY_ORDERS",
    "KINDS",
    "ListingOrderError",
    "ShardSummary",
    "ShardsFailed",
    "SweepError",
    "SweepOptions",
    "SweepPlan",
    "SweepSummary",
    "cell_of",
    "discover_cells",
    "finish_planned",
    "finish_sweep",
    "first_finding",
    "first_pages",
    "inventory_connection",
    "open_findings",
    "plan_shards",
    "plan_sweep",
    "prefix_cells",
    "record_shard_failure",
    "run_sweep",
    "shard_label",
    "start_sweep",
    "sweep_and_record",
    "sweep_shard",
]

log = logging.getLogger(__name__)

KINDS = ("missing", "orphan", "size_mismatch", "checksum_mismatch", "fallback_only")
KEY_ORDERS = LISTING_ORDERS  # the merge orders: the same two a provider may list in
# health probes, the cleanup's quarantine and temporary uploads are nobody's orphans
DEFAULT_EXCLUDE = RESERVED_PREFIXES
LOOKAHEAD = 2  # cells whose first listing page is fetched ahead of the merge


class SweepError(BadInput):
    """The sweep cannot run as asked."""


class ShardsFailed(ProblemFound):
    """Some shards of the sweep failed or never ran: the sweep is marked failed, its findings incomplete."""


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    depth: int = 2
    key_order: str = "path"  # the merge order; each provider's listing is brought into it
    deep_rate: float = 0.0
    prefix: str = ""
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    buckets: tuple[str, ...] = ()  # bucket names URL-form references may carry; () = the swept providers'
    references: tuple[tuple[str, str], ...] = REFERENCE_COLUMNS

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 8:
            raise SweepError(f"depth must be 1..8, got {self.depth}")
        if self.key_order not in KEY_ORDERS:
            raise SweepError(f"key_order must be one of {', '.join(KEY_ORDERS)}, got {self.key_order!r}")
        if not 0.0 <= self.deep_rate <= 1.0:
            raise SweepError(f"deep_rate must be between 0 and 1, got {self.deep_rate}")
        if any(not e for e in self.exclude):
            raise SweepError("exclude prefixes must not be empty")

    @classmethod
    def for_settings(cls, settings: Any, *, depth: int = 2, key_order: str = "path", deep_sample: float = 0.0,
                     prefix: str | None = None) -> SweepOptions:
        """The options of a sweep asked for by its parameters (the DAG's Params, native values):
        ``prefix`` None or empty means everything; URL-form references may name any configured
        bucket (``settings.storage``), swept or not. A bad value is a ``SweepError``."""
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise SweepError(f"depth must be a whole number, got {depth!r}")
        if isinstance(deep_sample, bool) or not isinstance(deep_sample, (int, float)):
            raise SweepError(f"deep_sample must be a number between 0 and 1, got {deep_sample!r}")
        if not isinstance(key_order, str) or not (prefix is None or isinstance(prefix, str)):
            raise SweepError(f"key_order and prefix must be text, got {key_order!r} and {prefix!r}")
        return cls(depth=depth, key_order=key_order, deep_rate=float(deep_sample), prefix=prefix or "",
                   buckets=configured_buckets(settings))

    def as_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "key_order": self.key_order, "deep_rate": self.deep_rate,
                "prefix": self.prefix, "exclude": list(self.exclude), "buckets": list(self.buckets),
                "references": [list(r) for r in self.references]}

    def query_params(self, providers: Sequence[StorageProvider]) -> dict[str, Any]:
        return {"depth": self.depth, "prefix": self.prefix,
                "buckets": list(self.buckets) or sorted({p.bucket for p in providers})}


# -- cells -------------------------------------------------------------------------------
def cell_of(key: str, depth: int) -> str:
    parts = key.split("/")
    if len(parts) > depth:
        return "/".join(parts[:depth]) + "/"
    return "/".join(parts[:-1]) + ("/" if len(parts) > 1 else "") + "*"


def _cell_prefix(cell: str) -> tuple[str, bool]:
    """(listing prefix, loose?) of a cell."""
    return (cell[:-1], True) if cell.endswith("*") else (cell, False)


def _cell_overlaps(cell: str, prefix: str) -> bool:
    head, loose = _cell_prefix(cell)
    if not prefix:
        return True
    if loose:  # objects directly under head: the prefix may reach into them
        return prefix.startswith(head) and "/" not in prefix[len(head):] or head.startswith(prefix)
    return head.startswith(prefix) or prefix.startswith(head)


def _provider_cells(provider: StorageProvider, depth: int, prefix: str = "", level: int = 0) -> Iterator[str]:
    loose = False
    for item in provider.list_page_stream(prefix, delimiter="/"):
        if isinstance(item, ObjectInfo):
            loose = True
        elif level + 1 >= depth:
            yield item
        else:
            yield from _provider_cells(provider, depth, item, level + 1)
    if loose:
        yield prefix + "*"


def discover_cells(conn: psycopg.Connection, providers: Sequence[StorageProvider], options: SweepOptions) -> list[str]:
    """Every cell that the database or any provider has something in, sorted, minus excluded ones."""
    query = sql.SQL(load("storage/cells.sql")).format(refs=references_query(options.references))
    cells = {row[0] for row in conn.execute(query, options.query_params(providers))}
    for provider in providers:
        try:
            cells.update(_provider_cells(provider, options.depth))
        except StorageError as exc:  # the same kind (unavailable: retried), saying what could not be done
            exc.args = (f"cannot list provider {exc.provider!r}: {exc}",)
            raise
    chosen = [c for c in cells if _cell_overlaps(c, options.prefix)
              and not any(_cell_prefix(c)[0].startswith(e) for e in options.exclude)]
    return sorted(chosen)


def plan_shards(cells: Sequence[str], shards: int) -> list[list[str]]:
    """Contiguous runs of cells, as even as the cell count allows; no empty shard."""
    if shards < 1:
        raise SweepError(f"shards must be at least 1, got {shards}")
    count = min(shards, len(cells))
    if count == 0:
        return []
    size, extra = divmod(len(cells), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(list(cells[start:end]))
        start = end
    return out


# -- the merge ----------------------------------------------------------------------------
def _order_hint(provider: StorageProvider) -> str:
    """What to do about a provider whose listing broke the order it declares."""
    return (f"; provider {provider.name!r} declares listing order {provider.settings.listing_order!r}: set "
            f"{provider.settings.kind.upper()}_LISTING_ORDER (connection extra listing_order) to the order it "
            "lists in ('path' for filer-backed stores such as SeaweedFS and MinIO, 'byte' for AWS S3)")


class _Ordered:
    """A key-sorted stream with one item of look-ahead that refuses to go backwards (``hint``:
    what to do when it does)."""

    def __init__(self, name: str, items: Iterator[Any], key_of: Callable[[Any], str], order: Callable[[str], Any],
                 *, allow_repeats: bool = False, hint: str = "") -> None:
        self.name = name
        self._items = items
        self._key_of = key_of
        self._order = order
        self._allow_repeats = allow_repeats
        self._hint = hint
        self.head: Any = None
        self.head_order: Any = None
        self.advance()

    def advance(self) -> None:
        previous, previous_order = self.head, self.head_order
        self.head = next(self._items, None)
        if self.head is None:
            self.head_order = None
            return
        self.head_order = self._order(self._key_of(self.head))
        if previous is not None and (self.head_order < previous_order or
                                     (self.head_order == previous_order and not self._allow_repeats)):
            raise ListingOrderError(
                f"{self.name} listed {self._key_of(self.head)!r} after {self._key_of(previous)!r}: "
                f"not in order{self._hint}")

    def take(self, order_value: Any) -> list[Any]:
        taken = []
        while self.head is not None and self.head_order == order_value:
            taken.append(self.head)
            self.advance()
        return taken


@dataclass
class _Tally:
    db_refs: int = 0
    listed: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    findings: dict[str, dict[str, int]] = field(default_factory=dict)
    deep_verified: int = 0
    reordered: dict[str, dict[str, int]] = field(default_factory=dict)  # provider: entries, spilled_runs

    def add_reordered(self, provider: str, sort: ExternalSort) -> None:
        per = self.reordered.setdefault(provider, {"entries": 0, "spilled_runs": 0})
        per["entries"] += sort.entries
        per["spilled_runs"] += sort.spilled_runs

    def add_finding(self, kind: str, provider: str) -> None:
        per = self.findings.setdefault(kind, {})
        per[provider] = per.get(provider, 0) + 1


def _sampled(key: str, salt: str, rate: float) -> bool:
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2 ** 64


class _Classifier:
    """Turns one key's database references and per-provider listings into findings.

    ``providers`` come in ``reference_order``: the primary (when swept) is the reference copy.
    ``emit(kind, key, provider, detail, reference)`` names, besides the provider a finding is
    about, the provider it was compared with (or None): the finding depends on both listings."""

    def __init__(self, providers: Sequence[StorageProvider], emit: Callable[[str, str, str, dict, str | None], None],
                 tally: _Tally, *, deep_rate: float, salt: str, recheck: set[tuple[str, str]]) -> None:
        self.providers = reference_order(providers)
        self.count = len(providers)
        self.primary = PRIMARY if any(p.name == PRIMARY for p in providers) else None
        self.emit = emit
        self.tally = tally
        self.deep_rate = deep_rate
        self.salt = salt
        self.recheck = recheck  # (key, provider) with an open checksum finding

    def key(self, key: str, refs: list[tuple], held: dict[str, ObjectInfo]) -> None:
        if refs and len(held) == self.count:  # the common case: referenced, everywhere, alike
            expected = refs[0][2]
            first = None
            for info in held.values():
                if first is None:
                    first = info
                elif info.size != first.size or info.etag != first.etag:
                    break
            else:
                if (expected is None or expected == first.size) and len(refs) == 1 and not (
                        self.deep_rate and _sampled(key, self.salt, self.deep_rate)) and not (
                        self.recheck and any((key, name) in self.recheck for name in held)):
                    return
        present = [p for p in self.providers if p.name in held]
        if not refs:
            for p in present:
                info = held[p.name]
                self.emit("orphan", key, p.name, {"size": info.size, "etag": info.etag}, None)
            return
        sources = sorted({r[3] for r in refs})
        if not present:
            for p in self.providers:
                self.emit("missing", key, p.name, {"referenced_by": sources, "present_on": []}, None)
            return
        names = [p.name for p in present]
        if self.primary is not None and self.primary not in held:
            for p in present:
                self.emit("fallback_only", key, p.name, {"referenced_by": sources, "present_on": names},
                          self.primary)
        else:  # the primary holds it, or was not swept: each swept provider answers for itself
            for p in self.providers:
                if p.name not in held:
                    self.emit("missing", key, p.name, {"referenced_by": sources, "present_on": names}, None)
        expected = next((r[2] for r in refs if r[2] is not None), None)
        sized_ok = []
        if expected is not None:
            for p in present:
                actual = held[p.name].size
                if actual != expected:
                    self.emit("size_mismatch", key, p.name, {"expected": expected, "actual": actual,
                                                             "expected_from": "database"}, None)
                else:
                    sized_ok.append(p)
        else:
            reference = held[present[0].name].size
            sized_ok.append(present[0])
            for p in present[1:]:
                actual = held[p.name].size
                if actual != reference:
                    self.emit("size_mismatch", key, p.name, {"expected": reference, "actual": actual,
                                                             "expected_from": present[0].name}, present[0].name)
                else:
                    sized_ok.append(p)
        self._checksums(key, sized_ok, held)

    def _checksums(self, key: str, candidates: list[StorageProvider], held: dict[str, ObjectInfo]) -> None:
        if not candidates:
            return
        etags = {held[p.name].etag for p in candidates}
        single_part = all("-" not in held[p.name].etag for p in candidates)
        disagree = len(etags) > 1 and single_part
        deep = (disagree or _sampled(key, self.salt, self.deep_rate)
                or any((key, p.name) in self.recheck for p in candidates))
        if not deep:
            return
        hashes: dict[str, tuple[str, str | None]] = {}
        for p in candidates:
            got = p.digest(key)
            if got is not None:
                hashes[p.name] = got
        self.tally.deep_verified += 1
        if not hashes:
            return
        flagged = set()
        for name, (content, meta) in hashes.items():
            if meta is not None and content != meta:
                self.emit("checksum_mismatch", key, name, {"metadata_sha256": meta, "content_sha256": content,
                                                           "found_by": "download"}, None)
                flagged.add(name)
        healthy = [(n, h) for n, h in hashes.items() if n not in flagged]
        if len(healthy) < 2:
            return
        ref_name, (ref_content, ref_meta) = healthy[0]
        for name, (content, meta) in healthy[1:]:
            if (meta or content) != (ref_meta or ref_content) or content != ref_content:
                self.emit("checksum_mismatch", key, name, {"sha256": meta or content, "reference": ref_name,
                                                           "reference_sha256": ref_meta or ref_content,
                                                           "found_by": "cross-provider"}, ref_name)


def _db_stream(conn: psycopg.Connection, providers: Sequence[StorageProvider], cells: Sequence[str],
               options: SweepOptions, *, served_by: str = "primary") -> Iterator[tuple]:
    """The inventory of ``cells`` in the merge order. A read the replica gives up on (a conflict
    with recovery cancels it, the replica goes away) is ``ReplicaUnavailable``: the shard can
    be swept again with the inventory from the primary."""
    query = sql.SQL(load("storage/inventory.sql")).format(
        order=sql.Identifier("parts" if options.key_order == "path" else "key"),
        refs=references_query(options.references))
    try:
        with conn.cursor(name="csl_inventory") as cur:
            cur.itersize = 5000
            cur.execute(query, {**options.query_params(providers), "cells": list(cells)})
            yield from cur
    except psycopg.OperationalError as exc:
        if served_by != "replica":
            raise
        raise ReplicaUnavailable(f"replica: the inventory read failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _cell_list_args(cell: str, options: SweepOptions) -> tuple[str, str | None]:
    """(prefix, delimiter) of the listing that covers a cell."""
    head, loose = _cell_prefix(cell)
    return (options.prefix if options.prefix.startswith(head) else head), ("/" if loose else None)


def _cell_listing(provider: StorageProvider, cell: str, options: SweepOptions, tally: _Tally,
                  first: Any = None, executor: Any = None) -> Iterator[ObjectInfo]:
    prefix, delimiter = _cell_list_args(cell, options)
    # only exclusions below the listed prefix can match here (excluded cells are never listed)
    exclude = tuple(e for e in options.exclude if e.startswith(prefix))
    count = size = 0
    try:
        for item in provider.list_page_stream(prefix, delimiter=delimiter, first=first, executor=executor):
            if item.__class__ is not ObjectInfo:
                continue  # a sub-folder of a loose cell: its own cells cover it
            if exclude and item.key.startswith(exclude):
                continue
            if item.key.endswith("/") and not item.size:
                continue  # a folder marker (SeaweedFS lists an emptied folder so), not an object
            count += 1
            size += item.size
            yield item
    finally:
        name = provider.name
        tally.listed[name] = tally.listed.get(name, 0) + count
        tally.bytes[name] = tally.bytes.get(name, 0) + size


def _key_of_object(info: ObjectInfo) -> str:
    return info.key


def _merge_cell(cell: str, db_rows: Iterator[tuple], providers: Sequence[StorageProvider], options: SweepOptions,
                classifier: _Classifier, tally: _Tally, *, firsts: dict[str, Any] | None = None,
                executor: Any = None) -> None:
    with ExitStack() as sorts:
        reordered = _merge_streams(cell, db_rows, providers, options, classifier, tally, firsts=firsts or {},
                                   executor=executor, sorts=sorts)
        for name, sort in reordered:
            tally.add_reordered(name, sort)


def _provider_stream(provider: StorageProvider, cell: str, options: SweepOptions, tally: _Tally, *, first: Any,
                     executor: Any, sorts: ExitStack) -> tuple[Iterator[ObjectInfo], ExternalSort | None]:
    """A provider's listing of ``cell`` in the merge order, checked against the provider's own
    order; sorted (bounded, ``ExternalSort``) only when the two orders differ in this cell."""
    listing = _cell_listing(provider, cell, options, tally, first=first, executor=executor)
    declared = provider.settings.listing_order
    # a loose cell is listed with a delimiter: its keys differ only after their last "/", where
    # path order is byte order, so its listing is in both orders or in neither
    if declared == options.key_order or cell.endswith("*"):
        return listing, None
    checked = in_order(listing, order=declared, key_of=_key_of_object, name=f"provider {provider.name!r}",
                       hint=_order_hint(provider))
    merge_key = order_key(options.key_order)
    sort = sorts.enter_context(ExternalSort(key=lambda info: merge_key(info.key), name=f"provider {provider.name!r}",
                                            make=ObjectInfo._make))
    return sort(checked), sort


def _merge_streams(cell: str, db_rows: Iterator[tuple], providers: Sequence[StorageProvider], options: SweepOptions,
                   classifier: _Classifier, tally: _Tally, *, firsts: dict[str, Any], executor: Any,
                   sorts: ExitStack) -> list[tuple[str, ExternalSort]]:
    order = order_key(options.key_order)
    streams = [_Ordered("the database inventory", db_rows, lambda r: r[1], order, allow_repeats=True,
                        hint=f" (the sweep's key order, {options.key_order!r})")]
    reordered = []
    for p in providers:  # reference_order, like the classifier's
        listing, sort = _provider_stream(p, cell, options, tally, first=firsts.get(p.name), executor=executor,
                                         sorts=sorts)
        if sort is not None:
            reordered.append((p.name, sort))
        streams.append(_Ordered(f"provider {p.name!r}", listing, _key_of_object, order, hint=_order_hint(p)))
    database, listings = streams[0], streams[1:]
    names = [p.name for p in providers]
    while True:
        current = None
        for stream in streams:
            if stream.head is not None and (current is None or stream.head_order < current):
                current = stream.head_order
        if current is None:
            break
        refs = database.take(current) if database.head is not None and database.head_order == current else []
        tally.db_refs += len(refs)
        held = {}
        key = refs[0][1] if refs else None
        for name, stream in zip(names, listings, strict=True):
            if stream.head is not None and stream.head_order == current:
                info = stream.head
                stream.advance()
                held[name] = info
                key = info.key
        classifier.key(key, refs, held)
    return reordered


def _cell_rows(rows: Iterator[tuple]) -> Iterator[tuple[str, Iterator[tuple]]]:
    """Split the inventory stream (sorted by cell) into per-cell sub-streams."""
    pending = next(rows, None)

    while pending is not None:
        cell = pending[0]

        def one_cell(cell: str = cell) -> Iterator[tuple]:
            nonlocal pending
            while pending is not None and pending[0] == cell:
                yield pending
                pending = next(rows, None)

        sub = one_cell()
        yield cell, sub
        for _ in sub:  # drain what the consumer left
            pass


def _merge_cells(read_conn: psycopg.Connection, route: ReadRoute, providers: Sequence[StorageProvider],
                 cells: Sequence[str], options: SweepOptions, classifier: _Classifier, tally: _Tally, *,
                 on_cell: Callable[[str], None] | None = None, started: Mapping[str, Any] | None = None) -> None:
    """Merge ``cells`` in turn: the inventory (one cursor on ``read_conn``, served by
    ``route.target``) against every provider's listing, each key to ``classifier``;
    ``on_cell(cell)`` before a cell is merged. The first page of the next cells' listings is
    fetched while a cell is merged (at most ``LOOKAHEAD`` pages per provider wait): the
    servers' time overlaps ours.

    Listings start after the inventory's snapshot: uploads write the object, then its row,
    so a listing older than the snapshot could miss an object whose row the snapshot has (a
    false ``missing``), while the other way round errs only towards a passing orphan. A
    replica's snapshot is taken before (``inventory_connection``), so there the first pages
    are fetched while the inventory query runs; on the primary, after it has started.
    ``started``: the first cell's first page per provider, already being fetched by a caller
    that accepts what an earlier listing can report (``first_finding``)."""
    first_pages: dict[tuple[int, str], Any] = {(0, name): page for name, page in (started or {}).items()}
    stream = None
    merged = False
    pool = ThreadPoolExecutor(max_workers=2 * len(providers), thread_name_prefix="csl-list")

    def look_ahead(index: int) -> None:
        for i in range(index, min(index + LOOKAHEAD + 1, len(cells))):
            prefix, delimiter = _cell_list_args(cells[i], options)
            for p in providers:
                if (i, p.name) not in first_pages:
                    first_pages[(i, p.name)] = pool.submit(p.list_page, prefix, delimiter=delimiter)

    try:
        if route.target == "replica":
            look_ahead(0)
        stream = _db_stream(read_conn, providers, cells, options, served_by=route.target)
        by_cell = _cell_rows(stream)
        pending = next(by_cell, None)  # the query runs: its snapshot is taken
        for index, cell in enumerate(cells):
            if on_cell is not None:
                on_cell(cell)
            look_ahead(index)
            firsts = {p.name: first_pages.pop((index, p.name)) for p in providers}
            rows: Iterator[tuple] = iter(())
            if pending is not None and pending[0] == cell:
                rows = pending[1]
            _merge_cell(cell, rows, providers, options, classifier, tally, firsts=firsts, executor=pool)
            if pending is not None and pending[0] == cell:
                pending = next(by_cell, None)
        merged = True
    except BaseException:
        if stream is not None:  # stopped early: its server-side cursor goes now, if it still can
            with suppress(Exception):  # the error that stopped it is the one to report
                stream.close()
        raise
    finally:
        # stopped early, nobody waits for the pages still being fetched: they end on their own
        pool.shutdown(wait=merged, cancel_futures=True)


class _Found(Exception):  # not an error: how first_finding stops the merge
    def __init__(self, kind: str, key: str, provider: str) -> None:
        super().__init__(kind, key, provider)
        self.finding = (kind, key, provider)


def first_pages(executor: Any, providers: Sequence[StorageProvider], cell: str,
                options: SweepOptions) -> dict[str, Any]:
    """The first listing page of ``cell`` on every provider, fetched on ``executor`` (futures by
    provider name): for a caller with other work to do before the merge (``first_finding``'s
    ``started``)."""
    prefix, delimiter = _cell_list_args(cell, options)
    return {p.name: executor.submit(p.list_page, prefix, delimiter=delimiter) for p in providers}


def first_finding(read_conn: psycopg.Connection, route: ReadRoute, providers: Sequence[StorageProvider],
                  cells: Sequence[str], options: SweepOptions, *, salt: str,
                  started: Mapping[str, Any] | None = None) -> tuple[str, str, str] | None:
    """What a sweep of ``cells`` would find first, as (kind, key, provider), or None when it
    would find nothing: the sweep's own merge and classifier, stopped at the first finding,
    nothing recorded. For a caller that only needs to know whether anything is wrong
    (replication's no-op check). It rechecks no open checksum finding: a caller asks only where
    there is none open. ``salt`` picks the ``deep_rate`` sample, as a sweep's id does;
    ``started``: the first cell's first pages (``first_pages``)."""
    providers = reference_order(providers)
    tally = _Tally()

    def emit(kind: str, key: str, provider: str, detail: dict, reference: str | None) -> None:
        raise _Found(kind, key, provider)

    classifier = _Classifier(providers, emit, tally, deep_rate=options.deep_rate, salt=salt, recheck=set())
    try:
        _merge_cells(read_conn, route, providers, cells, options, classifier, tally, started=started)
    except _Found as found:
        return found.finding
    return None


def prefix_cells(options: SweepOptions) -> list[str] | None:
    """The cells of a sweep of ``options.prefix`` known without listing anything: a prefix that
    ends in "/" at ``depth`` = its own number of segments is one subtree cell, itself (none when
    it is excluded). None when the cells must be discovered (``discover_cells``)."""
    prefix = options.prefix
    if not prefix.endswith("/") or prefix.count("/") != options.depth:
        return None
    return [] if prefix.startswith(options.exclude) else [prefix]


# -- sweep lifecycle -----------------------------------------------------------------------
def start_sweep(conn: psycopg.Connection, *, run_key: str, providers: Sequence[StorageProvider],
                options: SweepOptions, cells: int) -> int:
    """Create (or, on a rerun of the same run, reopen) the sweep's record; returns its id."""
    row = conn.execute(
        "INSERT INTO csl_ops.storage_sweeps (run_key, providers, key_order, params, cells) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_key) DO UPDATE SET status = 'running', "
        "providers = excluded.providers, params = excluded.params, cells = excluded.cells, finished_at = NULL "
        "RETURNING id",
        (run_key, [p.name for p in reference_order(providers)], options.key_order, json.dumps(options.as_dict()),
         cells),
    ).fetchone()
    return row[0]


@dataclass(frozen=True)
class SweepPlan:
    """A planned sweep: its record's id, every cell, the cells of each shard and the providers'
    names (as given). ``as_dict()`` is the XCom ``plan``; ``shards()`` one item per shard, each
    what one mapped sweep task gets (``sweep_and_record``)."""

    sweep_id: int
    cells: list[str]
    shard_cells: list[list[str]]
    providers: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "cells": self.cells, "shards": len(self.shard_cells),
                "providers": self.providers}

    def shards(self) -> list[dict[str, Any]]:
        return [{"sweep_id": self.sweep_id, "shard": i, "cells": cells} for i, cells in enumerate(self.shard_cells)]


def shard_label(shard: Mapping[str, Any]) -> str:
    """A shard item's name (its mapped task's name): ``2: samples/0a/ … samples/0f/``."""
    cells = shard["cells"]
    return f"{shard['shard']}: {cells[0]} … {cells[-1]}" if cells else str(shard["shard"])


def plan_sweep(conn: psycopg.Connection, providers: Sequence[StorageProvider], *, run_key: str, shards: int,
               options: SweepOptions) -> SweepPlan:
    """Find the cells, deal them out to shards and open (or reopen) the sweep's record with no
    shard results yet. A provider that cannot be listed is named (``cannot list provider …``)."""
    if isinstance(shards, bool) or not isinstance(shards, int):
        raise SweepError(f"shards must be a whole number, got {shards!r}")
    cells = discover_cells(conn, providers, options)
    shard_cells = plan_shards(cells, shards)
    sweep_id = start_sweep(conn, run_key=run_key, providers=providers, options=options, cells=len(cells))
    conn.execute("DELETE FROM csl_ops.storage_sweep_shards WHERE sweep_id = %s", (sweep_id,))
    plan = SweepPlan(sweep_id, cells, shard_cells, [p.name for p in providers])
    log.info("sweep %s: %s cells in %s shards over providers %s", sweep_id, len(cells), len(shard_cells),
             plan.providers)
    return plan


_STAGE = """
CREATE TEMP TABLE shard_findings (
    kind text NOT NULL, object_key text NOT NULL, provider text NOT NULL, cell text NOT NULL, detail jsonb NOT NULL,
    depends_on text[] NOT NULL
) ON COMMIT DROP
"""


InventoryConnect = Callable[[], AbstractContextManager[tuple[psycopg.Connection, ReadRoute]]]


# the snapshot a replica's inventory read sees holds every transaction the primary committed
# before %s (its WAL position when the shard started) once the replica has replayed up to it
_CAUGHT_UP_SQL = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn"


@contextmanager
def inventory_connection(db: Any, *, replica: bool = True) -> Iterator[tuple[psycopg.Connection, ReadRoute]]:
    """The connection a shard reads its inventory on, and where it goes (``ReadRoute.target``).

    The replica when ``db.read_route()`` (a ``csl.db.Database``) sends reads there and the
    replica replays, within ``max_replica_lag_s``, up to the primary's WAL position of now: its
    snapshot (REPEATABLE READ, taken right then) then holds everything committed on the primary
    before the shard started, and is at most that old (``ReadRoute.lag_s``: the seconds it took).
    Else the primary; ``replica=False``: always. Findings are written on the primary in the
    same shard: the bound is what keeps the two views close."""
    route = db.read_route() if replica else ReadRoute("primary", "asked for the primary")
    conn = None
    if route.target == "replica":
        conn, route = _replica_snapshot(db)
    if conn is None:
        conn = db.connect_direct(autocommit=False)
    with conn:
        yield conn, route


def _replica_snapshot(db: Any) -> tuple[psycopg.Connection | None, ReadRoute]:
    """A replica connection in a REPEATABLE READ transaction whose snapshot has caught up with
    the primary's WAL position of now, or (None, why not)."""
    bound = db.settings.max_replica_lag_s
    conn = None
    try:
        with db.connection() as primary:  # pooled: a run's own statements use it too
            (position,) = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        started = time.monotonic()
        conn = db.connect_direct("replica", autocommit=True)
        while True:
            in_recovery, caught_up = conn.execute(_CAUGHT_UP_SQL, (position,)).fetchone()
            waited = time.monotonic() - started
            if not in_recovery or caught_up or waited > bound:
                break
            time.sleep(0.02)
        if in_recovery and caught_up:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            in_recovery, caught_up = conn.execute(_CAUGHT_UP_SQL, (position,)).fetchone()  # takes the snapshot
    except (psycopg.Error, OSError, DatabaseError) as exc:  # DatabaseError: the pool's, for the primary
        if conn is not None:
            conn.close()
        return None, ReadRoute("primary", f"replica unavailable: {_one_line(exc)}")
    if not in_recovery or not caught_up:
        conn.close()
        why = ("not in recovery: not a standby" if not in_recovery
               else f"it had not replayed the primary's WAL position {position} after {bound:g}s")
        return None, ReadRoute("primary", f"replica unavailable for the inventory: {why}", round(waited, 3))
    return conn, ReadRoute("replica", f"replica caught up with the primary in {waited:.3f}s", round(waited, 3))


def _on_primary(connect: Callable[[], Any]) -> InventoryConnect:
    @contextmanager
    def inventory() -> Iterator[tuple[psycopg.Connection, ReadRoute]]:
        with connect() as conn:
            yield conn, ReadRoute("primary", "the writer's database")
    return inventory


def sweep_shard(connect: Callable[[], Any], providers: Sequence[StorageProvider], *, sweep_id: int, shard: int,
                cells: Sequence[str], options: SweepOptions,
                inventory: InventoryConnect | None = None) -> ShardSummary:
    """Sweep ``cells`` and write their findings in one transaction; returns the shard summary.

    ``connect()`` returns a context manager yielding a psycopg connection to the primary (the
    staging writer). ``inventory()`` one yielding (connection, ``ReadRoute``) for the inventory
    cursor (``inventory_connection``); without it the inventory is read on a second
    ``connect()``. The summary's ``inventory_from`` says which database served it."""
    if not providers:
        raise SweepError("no storage providers configured")
    providers = reference_order(providers)
    names = [p.name for p in providers]
    started = time.perf_counter()
    tally = _Tally()
    with (inventory or _on_primary(connect))() as (read_conn, route), connect() as write_conn:
        if read_conn.autocommit:  # a replica's is in its snapshot's transaction already
            read_conn.autocommit = False
        write_conn.autocommit = False
        row = write_conn.execute("SELECT providers FROM csl_ops.storage_sweeps WHERE id = %s", (sweep_id,)).fetchone()
        if row is None or sorted(row[0]) != sorted(names):
            raise SweepError(f"sweep {sweep_id} was planned for providers {row[0] if row else None}, "
                             f"not {names}: a shard sweeps what its sweep planned")
        write_conn.execute(_STAGE)
        recheck = {(k, p) for k, p in write_conn.execute(
            "SELECT object_key, provider FROM csl_ops.storage_findings WHERE resolved_at IS NULL "
            "AND kind = 'checksum_mismatch' AND cell = ANY(%s)", (list(cells),))}
        with write_conn.cursor() as cur, cur.copy(
                "COPY shard_findings (kind, object_key, provider, cell, detail, depends_on) FROM STDIN") as copy:
            current_cell = ""

            def emit(kind: str, key: str, provider: str, detail: dict, reference: str | None) -> None:
                depends_on = [provider] if reference in (None, provider) else sorted((provider, reference))
                copy.write_row((kind, key, provider, current_cell, json.dumps(detail), depends_on))
                tally.add_finding(kind, provider)

            def on_cell(cell: str) -> None:
                nonlocal current_cell
                current_cell = cell

            classifier = _Classifier(providers, emit, tally, deep_rate=options.deep_rate,
                                     salt=str(sweep_id), recheck=recheck)
            _merge_cells(read_conn, route, providers, cells, options, classifier, tally, on_cell=on_cell)
        read_conn.rollback()
        # close_findings looks each open finding up here: without an index (and a temp table has
        # no statistics) that is a scan of the staged findings per open one — 5,000 × 5,000 took
        # 7 s, indexed 0.06 s
        write_conn.execute("CREATE INDEX ON shard_findings (object_key)")
        new, refreshed = write_conn.execute(load("storage/apply_findings.sql"), {"sweep": sweep_id}).fetchone()
        closed = write_conn.execute(load("storage/close_findings.sql"),
                                    {"sweep": sweep_id, "cells": list(cells), "prefix": options.prefix,
                                     "providers": names, "kinds": list(KINDS)}).rowcount
        summary = ShardSummary(shard=shard, providers=names, cells=len(cells), db_refs=tally.db_refs,
                               listed=tally.listed, bytes=tally.bytes, findings=tally.findings, new=new,
                               still_open=refreshed, closed=closed, deep_verified=tally.deep_verified,
                               duration_s=round(time.perf_counter() - started, 3), inventory_from=route.target,
                               inventory_lag_s=route.lag_s if route.target == "replica" else None,
                               reordered=tally.reordered)
        write_conn.execute(
            "INSERT INTO csl_ops.storage_sweep_shards (sweep_id, shard, cells, providers, status, summary) "
            "VALUES (%s, %s, %s, %s, 'done', %s) ON CONFLICT (sweep_id, shard) DO UPDATE SET status = 'done', "
            "cells = excluded.cells, providers = excluded.providers, summary = excluded.summary, error = NULL, "
            "finished_at = now()",
            (sweep_id, shard, list(cells), names, json.dumps(summary.as_dict())))
        write_conn.commit()
    log.info("sweep %s shard %s: %s cells, %s references (inventory from the %s: %s), listed %s%s, findings %s "
             "(new %s, closed %s) in %.1fs", sweep_id, shard, len(cells), tally.db_refs, route.target, route.reason,
             tally.listed, f" (brought into {options.key_order} order: {tally.reordered})" if tally.reordered else "",
             tally.findings, new, closed, summary.duration_s)
    return summary


def sweep_and_record(db: Any, providers: Sequence[StorageProvider], shard: Mapping[str, Any], *,
                     options: SweepOptions) -> ShardSummary:
    """Sweep one shard item of a ``SweepPlan`` (``{"sweep_id", "shard", "cells"}``) on ``db``
    (a ``csl.db.Database``): the inventory from the replica when it is healthy and within the
    lag bound, else from the primary (``inventory_connection``; a replica that gives up midway
    means the shard is swept again from the primary); findings written on the primary. A shard
    that fails (a provider down or refusing, a listing out of order, a sweep planned for other
    providers) is recorded as failed (``finish_sweep`` names it) and its error raised again."""
    sweep_id, number, cells = shard["sweep_id"], shard["shard"], shard["cells"]

    def sweep(replica: bool) -> ShardSummary:
        return sweep_shard(lambda: db.connect_direct(autocommit=False), providers, sweep_id=sweep_id, shard=number,
                           cells=cells, options=options, inventory=lambda: inventory_connection(db, replica=replica))

    try:
        try:
            return sweep(replica=True)
        except ReplicaUnavailable as exc:  # nothing was written: the shard again, read on the primary
            log.warning("sweep %s shard %s: %s; sweeping it again with the inventory from the primary",
                        sweep_id, number, exc)
            return sweep(replica=False)
    except (StorageError, ListingOrderError, SweepError) as exc:
        with db.connect_direct() as conn:
            record_shard_failure(conn, sweep_id=sweep_id, shard=number, cells=cells, error=exc)
        raise


def record_shard_failure(conn: psycopg.Connection, *, sweep_id: int, shard: int, cells: Sequence[str],
                         error: BaseException) -> None:
    provider = getattr(error, "provider", None)
    conn.execute(
        "INSERT INTO csl_ops.storage_sweep_shards (sweep_id, shard, cells, providers, status, summary, error) "
        "SELECT %s, %s, %s, providers, 'failed', %s, %s FROM csl_ops.storage_sweeps WHERE id = %s "
        "ON CONFLICT (sweep_id, shard) DO UPDATE SET status = 'failed', "
        "summary = excluded.summary, error = excluded.error, finished_at = now()",
        (sweep_id, shard, list(cells), json.dumps({"provider": provider}), str(error)[:2000], sweep_id))


def finish_sweep(conn: psycopg.Connection, *, sweep_id: int, shards: int, all_cells: Sequence[str],
                 options: SweepOptions) -> SweepSummary:
    """Aggregate the shards. When every shard is done, findings in cells that no longer exist
    anywhere are closed too (those the swept providers can judge); otherwise the sweep is
    marked failed and the failures named (``SweepSummary.check`` raises them). Only findings of
    the sweep's ``KINDS`` are ever closed by it (replication closes its own conflicts)."""
    rows = conn.execute("SELECT shard, status, summary, error FROM csl_ops.storage_sweep_shards "
                        "WHERE sweep_id = %s ORDER BY shard", (sweep_id,)).fetchall()
    done = [r for r in rows if r[1] == "done"]
    failed = [{"shard": r[0], "provider": (r[2] or {}).get("provider"), "error": r[3]} for r in rows if r[1] != "done"]
    missing_shards = sorted(set(range(shards)) - {r[0] for r in rows})
    summary: dict[str, Any] = {"sweep_id": sweep_id, "shards": shards, "shards_done": len(done),
                               "cells": len(all_cells), "db_refs": 0, "listed": {}, "bytes": {},
                               "findings": {}, "new": 0, "closed": 0, "deep_verified": 0, "failed": failed,
                               "not_run": missing_shards, "inventory_from": {}, "reordered": {}}
    for _, _, s, _ in done:
        for name in ("db_refs", "new", "closed", "deep_verified"):
            summary[name] += s[name]
        for name in ("listed", "bytes"):
            for provider, n in s[name].items():
                summary[name][provider] = summary[name].get(provider, 0) + n
        for kind, per in s["findings"].items():
            agg = summary["findings"].setdefault(kind, {})
            for provider, n in per.items():
                agg[provider] = agg.get(provider, 0) + n
        served_by = s.get("inventory_from")  # shards recorded before issue 14 do not say
        if served_by:
            summary["inventory_from"][served_by] = summary["inventory_from"].get(served_by, 0) + 1
        for provider, per in s.get("reordered", {}).items():
            agg = summary["reordered"].setdefault(provider, {"entries": 0, "spilled_runs": 0})
            for name, n in per.items():
                agg[name] = agg.get(name, 0) + n
    ok = not failed and not missing_shards
    if ok:
        summary["closed"] += conn.execute(
            "UPDATE csl_ops.storage_findings f SET resolved_at = now(), resolved_sweep_id = s.id "
            "FROM csl_ops.storage_sweeps s WHERE s.id = %s AND f.resolved_at IS NULL AND f.kind = ANY(%s) "
            "AND starts_with(f.object_key, %s) AND NOT (f.cell = ANY(%s)) AND f.depends_on <@ s.providers",
            (sweep_id, list(KINDS), options.prefix, list(all_cells))).rowcount
    duration, summary["providers"] = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - started_at), providers FROM csl_ops.storage_sweeps "
        "WHERE id = %s", (sweep_id,)).fetchone()
    summary["duration_s"] = round(float(duration), 3)
    summary["open_findings"] = dict(conn.execute(
        "SELECT kind, count(*) FROM csl_ops.storage_findings WHERE resolved_at IS NULL GROUP BY kind").fetchall())
    conn.execute("UPDATE csl_ops.storage_sweeps SET status = %s, summary = %s, finished_at = now() WHERE id = %s",
                 ("done" if ok else "failed", json.dumps(summary), sweep_id))
    result = SweepSummary(**summary)
    log.info("sweep %s: %s references, listed %s, findings %s (new %s, closed %s), open now %s",
             result.sweep_id, result.db_refs, result.listed, result.finding_counts, result.new, result.closed,
             result.open_findings)
    return result


def finish_planned(conn: psycopg.Connection, plan: Mapping[str, Any], *, options: SweepOptions) -> SweepSummary:
    """``finish_sweep`` of a ``SweepPlan`` as its ``as_dict()`` (the XCom ``plan``)."""
    return finish_sweep(conn, sweep_id=plan["sweep_id"], shards=plan["shards"], all_cells=plan["cells"],
                        options=options)


def open_findings(conn: psycopg.Connection, *, sweep_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Open findings (those seen by ``sweep_id`` if given), ordered by kind, key, provider."""
    query = ("SELECT kind, object_key, provider, detail, first_seen_at, last_seen_at FROM csl_ops.storage_findings "
             "WHERE resolved_at IS NULL" + (" AND last_sweep_id = %(sweep)s" if sweep_id is not None else "") +
             " ORDER BY kind, object_key, provider" + (" LIMIT %(limit)s" if limit else ""))
    return [{"kind": r[0], "key": r[1], "provider": r[2], "detail": r[3], "first_seen_at": r[4].isoformat(),
             "last_seen_at": r[5].isoformat()}
            for r in conn.execute(query, {"sweep": sweep_id, "limit": limit})]


def _shard_worker(args: tuple) -> ShardSummary | dict[str, Any]:
    settings, item, options, provider_names = args
    from csl.db import Database

    providers = providers_for(settings, provider_names)
    with Database(settings.require_database(), max_pool_size=2) as db:
        try:
            return sweep_and_record(db, providers, item, options=options)
        except (StorageError, SweepError, ListingOrderError) as exc:
            return {"shard": item["shard"], "error": str(exc), "provider": getattr(exc, "provider", None)}


def run_sweep(settings: Any, *, run_key: str, shards: int = 4, workers: int = 2,
              options: SweepOptions = SweepOptions(), provider_names: Iterable[str] | None = None) -> SweepSummary:
    """The whole sweep without Airflow: plan, shards in ``workers`` processes, finish. The
    summary's ``errors`` are the shards that failed in this run (``failed`` those the record holds)."""
    from concurrent.futures import ProcessPoolExecutor

    from csl.db import Database

    providers = reference_order(providers_for(settings, provider_names))
    names = [p.name for p in providers]
    if not options.buckets:  # URL-form references may name any configured bucket, swept or not
        options = replace(options, buckets=configured_buckets(settings))
    started = time.perf_counter()
    with Database(settings.require_database(), max_pool_size=2) as db, db.connect_direct() as conn:
        plan = plan_sweep(conn, providers, run_key=run_key, shards=shards, options=options)
        jobs = [(settings, item, options, names) for item in plan.shards()]
        if workers <= 1 or len(jobs) <= 1:
            results = [_shard_worker(job) for job in jobs]
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                results = list(pool.map(_shard_worker, jobs))
        summary = finish_sweep(conn, sweep_id=plan.sweep_id, shards=len(plan.shard_cells), all_cells=plan.cells,
                               options=options)
    return replace(summary, duration_s=round(time.perf_counter() - started, 3),
                   errors=[r for r in results if isinstance(r, dict)])


@dataclass(frozen=True, kw_only=True)
class ShardSummary:
    """One swept shard: what was listed and found in its cells (``as_dict()``: the XCom ``shard``
    and the ``csl_ops.storage_sweep_shards`` summary). ``inventory_from`` names the database the
    inventory was read on; ``reordered`` the providers whose listings were brought into the
    sweep's key order (entries sorted, runs spilled to disk)."""

    shard: int
    providers: list[str]
    cells: int
    db_refs: int
    listed: dict[str, int]
    bytes: dict[str, int]
    findings: dict[str, dict[str, int]]
    new: int
    still_open: int
    closed: int
    deep_verified: int
    duration_s: float
    inventory_from: str = "primary"  # the database that served the inventory: "replica" or "primary"
    inventory_lag_s: float | None = None  # the replica's: seconds it took to replay the primary's position
    reordered: dict[str, dict[str, int]] = field(default_factory=dict)  # provider: entries, spilled_runs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SweepSummary:
    """A finished (or failed) sweep: totals per finding kind and provider, bytes, duration, and
    the shards that failed (``failed``: recorded failures; ``not_run``: shards with no record),
    how many shards' inventories the replica and the primary served (``inventory_from``) and
    the listings brought into the sweep's key order (``reordered``).
    ``as_dict()`` is the XCom ``summary`` and the run record's outcome; ``errors`` (shards that
    failed in ``run_sweep``) appears in it only when there are some."""

    sweep_id: int
    shards: int
    shards_done: int
    cells: int
    db_refs: int
    listed: dict[str, int]
    bytes: dict[str, int]
    findings: dict[str, dict[str, int]]
    new: int
    closed: int
    deep_verified: int
    failed: list[dict[str, Any]]
    not_run: list[int]
    providers: list[str]
    duration_s: float
    open_findings: dict[str, int]
    inventory_from: dict[str, int] = field(default_factory=dict)  # shards whose inventory each database served
    reordered: dict[str, dict[str, int]] = field(default_factory=dict)  # provider: entries, spilled_runs
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.errors:
            del out["errors"]
        return out

    @property
    def finding_counts(self) -> dict[str, int]:
        """Findings per kind, over every provider."""
        return {kind: sum(per.values()) for kind, per in self.findings.items()}

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Every shard that did not sweep (``shard``, ``provider`` or None, ``error``), those that
        never ran included."""
        return self.failed + [{"shard": s, "provider": None, "error": "never ran"} for s in self.not_run]

    @property
    def error(self) -> str | None:
        """The failures in one line, for the run record; None when every shard swept."""
        return "; ".join(f"shard {f['shard']}: {f['error']}" for f in self.failures) or None

    def check(self) -> None:
        """Raises ``ShardsFailed`` naming the shards (and providers) that did not sweep."""
        failures = self.failures
        if failures:
            providers = sorted({f["provider"] for f in failures if f["provider"]})
            raise ShardsFailed(f"{len(failures)} of {self.shards} shards did not sweep"
                               + (f" (provider {', '.join(map(repr, providers))} failed)" if providers else "")
                               + ": " + (self.error or "")[:1500])
