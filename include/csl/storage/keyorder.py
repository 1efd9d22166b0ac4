"""The orders object listings come in, and bringing a listing into another one with bounded memory.

S3-compatible providers do not agree on the order of a listing:

- ``path`` — filer-backed stores (SeaweedFS, MinIO) list folder by folder: a key compares
  segment by segment (``a/b`` before ``a-c``, because the folder ``a`` sorts before ``a-c``);
- ``byte`` — AWS S3 (and Supabase Storage) list in UTF-8 byte order (``a-c`` before ``a/b``,
  since ``-`` is 0x2d and ``/`` 0x2f).

Every provider declares its order (``StorageProviderSettings.listing_order``). A stream is
checked against its own order as it is read (``in_order``): a listing that goes backwards or
repeats a key raises ``ListingOrderError`` naming the stream, because a merge over it would
report false findings. ``ExternalSort`` brings a stream into another order with bounded
memory: it sorts up to ``SORT_BUFFER`` entries in memory and beyond that spills sorted runs
to temporary files (``TMPDIR``) that ``heapq.merge`` reads back, at most ``MERGE_FAN_IN`` at
once; the files are removed when the stream ends or the sort is closed, also on error.
Python compares ``str`` by code point, which is UTF-8 byte order, like PostgreSQL's ``"C"``
collation (the database inventory's order).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from operator import itemgetter
from typing import IO, Any, Self, TypeVar

from csl.config import LISTING_ORDERS
from csl.errors import ProblemFound

__all__ = [
    "LISTING_ORDERS",
    "MERGE_FAN_IN",
    "SORT_BUFFER",
    "ExternalSort",
    "ListingOrderError",
    "in_order",
    "order_key",
]

T = TypeVar("T")

SORT_BUFFER = 50_000  # entries sorted in memory (a few MB of ObjectInfo); beyond it, runs spill to disk
MERGE_FAN_IN = 64  # runs read at once by a merge; more are first merged into one longer run
_first = itemgetter(0)
_NOTHING = object()


class ListingOrderError(ProblemFound):
    """A stream came out of order (or repeated a key): a merge over it would report false
    findings, so it stops."""


def _path_key(key: str) -> list[str]:
    return key.split("/")


def _byte_key(key: str) -> str:
    return key


def order_key(order: str) -> Callable[[str], Any]:
    """The sort key of an object key in ``order`` (``path`` or ``byte``)."""
    if order == "path":
        return _path_key
    if order == "byte":
        return _byte_key
    raise ValueError(f"listing order must be one of {', '.join(LISTING_ORDERS)}, got {order!r}")


def in_order(items: Iterable[T], *, order: str, key_of: Callable[[T], str], name: str,
             hint: str = "") -> Iterator[T]:
    """``items`` as they come, each checked to sort strictly after the one before in ``order``;
    a key that goes backwards or repeats raises ``ListingOrderError`` naming ``name`` (and
    ``hint``: what to do about it)."""
    sort_key = order_key(order)
    previous: Any = None
    previous_key: Any = None
    for item in items:
        key = sort_key(key_of(item))
        if previous is not None and not previous_key < key:
            raise ListingOrderError(f"{name} listed {key_of(item)!r} after {key_of(previous)!r}: "
                                    f"not in {order} order{hint}")
        previous, previous_key = item, key
        yield item


class ExternalSort:
    """Sorts a stream by ``key`` with at most ``bound`` entries in memory (default ``SORT_BUFFER``)::

        with ExternalSort(key=lambda o: order_key("path")(o.key), name="provider 'aws'",
                          make=ObjectInfo._make) as sort:
            for item in sort(listing): ...

    Items are tuples of JSON values whose first field names them (``ObjectInfo``: the key); a
    spilled item is read back with ``make``.
    Two items with the same key raise ``ListingOrderError`` (a listing names each key once).
    ``entries`` and ``spilled_runs`` say what the sort did; the temporary files (a 0700
    ``csl-sort-*`` folder in ``TMPDIR``) are removed when the sorted stream ends and by
    ``close()`` (``with``), whichever comes first."""

    def __init__(self, *, key: Callable[[Any], Any], name: str, bound: int | None = None,
                 make: Callable[[list], Any] = tuple, directory: str | None = None) -> None:
        self._key = key
        self.name = name
        self.bound = bound if bound is not None else SORT_BUFFER
        if self.bound < 1:
            raise ValueError(f"the sort's bound must be at least 1 entry, got {self.bound}")
        self._make = make
        self._parent = directory
        self.directory: str | None = None  # made at the first spill
        self.entries = 0
        self.spilled_runs = 0
        self._runs: list[str] = []
        self._open: list[Generator[tuple[Any, Any], None, None]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the runs being read and remove the temporary files (idempotent)."""
        for reader in self._open:
            reader.close()
        self._open.clear()
        self._runs.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __call__(self, items: Iterable[Any]) -> Iterator[Any]:
        """``items`` in key order. Reads all of them before yielding the first."""
        key = self._key
        buffer: list[tuple[Any, Any]] = []
        try:
            for item in items:
                buffer.append((key(item), item))
                if len(buffer) >= self.bound:
                    self.entries += len(buffer)
                    self._spill(buffer)
                    buffer = []
            self.entries += len(buffer)
            buffer.sort(key=_first)
            if not self._runs:
                yield from self._unique(iter(buffer))
                return
            streams = [self._read(path) for path in self._runs]
            yield from self._unique(heapq.merge(*streams, iter(buffer), key=_first))
        finally:
            self.close()

    def _unique(self, decorated: Iterator[tuple[Any, Any]]) -> Iterator[Any]:
        previous: Any = _NOTHING
        for sort_key, item in decorated:
            if sort_key == previous:
                raise ListingOrderError(f"{self.name} listed {item[0]!r} twice")
            previous = sort_key
            yield item

    # -- runs on disk -----------------------------------------------------------------------
    def _new_run(self) -> tuple[str, IO[str]]:
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="csl-sort-", dir=self._parent)
        fd, path = tempfile.mkstemp(prefix="run-", suffix=".jsonl", dir=self.directory)
        return path, os.fdopen(fd, "w", encoding="utf-8")

    def _spill(self, buffer: list[tuple[Any, Any]]) -> None:
        buffer.sort(key=_first)
        path, out = self._new_run()
        with out:
            out.writelines(json.dumps(item, ensure_ascii=False) + "\n" for _, item in buffer)
        self._runs.append(path)
        self.spilled_runs += 1
        if len(self._runs) >= MERGE_FAN_IN:  # bound the files open at once: merge these into one
            merged, out = self._new_run()
            with out:
                streams = [self._read(run) for run in self._runs]
                out.writelines(json.dumps(item, ensure_ascii=False) + "\n"
                               for _, item in heapq.merge(*streams, key=_first))
            for reader in self._open:
                reader.close()
            self._open.clear()
            for run in self._runs:
                os.unlink(run)
            self._runs = [merged]

    def _read(self, path: str) -> Generator[tuple[Any, Any], None, None]:
        reader = self._lines(path)
        self._open.append(reader)  # close() closes it (and so its file), also when a merge stops midway
        return reader

    def _lines(self, path: str) -> Generator[tuple[Any, Any], None, None]:
        key, make = self._key, self._make
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                item = make(json.loads(line))
                yield key(item), item
