"""csl.storage.keyorder: the two listing orders, the order check and the bounded external sort."""

from __future__ import annotations

import os
import random

import pytest

from csl.storage import ObjectInfo, keyorder
from csl.storage.keyorder import ExternalSort, ListingOrderError, in_order, order_key

# keys that the two orders put differently: "/" (0x2f) sorts after "-" and "." but a path's
# folder comes before any longer name it prefixes; "é" is two UTF-8 bytes above "~"
KEYS = ["a/b", "a-c", "a.d", "a0", "ab", "a~", "aé", "x/y/z", "a/b/c", "a", "A", "a b", "x-y"]
PATH = ["A", "a", "a/b", "a/b/c", "a b", "a-c", "a.d", "a0", "ab", "a~", "aé", "x/y/z", "x-y"]
BYTE = ["A", "a", "a b", "a-c", "a.d", "a/b", "a/b/c", "a0", "ab", "a~", "aé", "x-y", "x/y/z"]


def _objects(keys):
    return [ObjectInfo(k, len(k), f"etag-{k}", "2026-12-01T00:00:00.000Z") for k in keys]


def test_the_two_orders_are_what_seaweedfs_and_aws_list():
    assert sorted(KEYS, key=order_key("path")) == PATH
    assert sorted(KEYS, key=order_key("byte")) == BYTE
    # byte order is UTF-8 byte order, as PostgreSQL's "C" collation sorts the inventory
    assert BYTE == [k.decode() for k in sorted(k.encode() for k in KEYS)]
    with pytest.raises(ValueError, match="path, byte"):
        order_key("unicode")


def test_a_stream_is_checked_against_its_own_order():
    assert list(in_order(iter(PATH), order="path", key_of=str, name="provider 'p'")) == PATH
    with pytest.raises(ListingOrderError, match=r"^provider 'p' listed 'a b' after 'a/b/c': not in byte order; fix$"):
        list(in_order(iter(PATH), order="byte", key_of=str, name="provider 'p'", hint="; fix"))
    with pytest.raises(ListingOrderError, match="listed 'a' after 'a'"):  # a repeated key is out of order too
        list(in_order(iter(["a", "a"]), order="path", key_of=str, name="x"))
    assert list(in_order(iter([]), order="byte", key_of=str, name="x")) == []


@pytest.mark.parametrize(("source", "target"), [("path", "byte"), ("byte", "path")])
def test_a_listing_is_brought_into_the_other_order_in_memory(source, target, tmp_path):
    listing = _objects(PATH if source == "path" else BYTE)
    key = order_key(target)
    with ExternalSort(key=lambda o: key(o.key), name="provider 'p'", make=ObjectInfo._make,
                      directory=str(tmp_path)) as sort:
        out = list(sort(iter(listing)))
    assert [o.key for o in out] == (BYTE if target == "byte" else PATH)
    assert out == sorted(listing, key=lambda o: key(o.key))  # whole items, not just keys
    assert (sort.entries, sort.spilled_runs) == (len(listing), 0)
    assert not os.listdir(tmp_path)  # nothing went to disk


def test_beyond_its_bound_the_sort_spills_runs_to_temporary_files_and_removes_them(tmp_path):
    rng = random.Random(14)
    keys = [f"samples/{rng.choice('ab')}{rng.choice(['/', '-', '.', '0', '~', 'é', ''])}{i:05d}.wav"
            for i in range(5000)]
    rng.shuffle(keys)
    key = order_key("path")
    seen_during: list[list[str]] = []
    with ExternalSort(key=lambda o: key(o.key), name="provider 'p'", bound=100, make=ObjectInfo._make,
                      directory=str(tmp_path)) as sort:
        out = sort(iter(_objects(keys)))
        first = next(out)
        seen_during.append(os.listdir(tmp_path))
        rest = list(out)
    assert [o.key for o in [first, *rest]] == sorted(keys, key=key)
    assert isinstance(first, ObjectInfo) and first.size == len(first.key)  # read back whole from disk
    assert sort.entries == 5000 and sort.spilled_runs == 50
    (folder,) = seen_during[0]  # one 0700 folder held the runs while the merge read them
    assert folder.startswith("csl-sort-")
    assert not os.listdir(tmp_path)  # and it is gone once the stream ended


def test_more_runs_than_the_fan_in_are_merged_in_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(keyorder, "MERGE_FAN_IN", 4)
    keys = [f"k{i:04d}" for i in range(1000)]
    shuffled = random.Random(1).sample(keys, len(keys))
    with ExternalSort(key=lambda o: o[0], name="s", bound=10, directory=str(tmp_path)) as sort:
        assert [o[0] for o in sort((k, i) for i, k in enumerate(shuffled))] == keys
    assert sort.spilled_runs == 100 and not os.listdir(tmp_path)


def test_the_module_bound_applies_when_none_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(keyorder, "SORT_BUFFER", 3)
    with ExternalSort(key=lambda o: o[0], name="s", directory=str(tmp_path)) as sort:
        assert list(sort([("c",), ("a",), ("d",), ("b",), ("e",), ("f",), ("g",)])) == [
            ("a",), ("b",), ("c",), ("d",), ("e",), ("f",), ("g",)]
    assert sort.bound == 3 and sort.spilled_runs == 2


@pytest.mark.parametrize("bound", [100, 2])  # in memory, and across spilled runs
def test_a_key_listed_twice_is_refused(bound, tmp_path):
    items = [("b", 1), ("a", 1), ("c", 1), ("b", 2)]
    with (ExternalSort(key=lambda o: o[0], name="provider 'aws'", bound=bound, directory=str(tmp_path)) as sort,
          pytest.raises(ListingOrderError, match=r"^provider 'aws' listed 'b' twice$")):
        list(sort(iter(items)))
    assert not os.listdir(tmp_path)


def test_an_empty_stream_sorts_to_nothing(tmp_path):
    with ExternalSort(key=lambda o: o[0], name="s", bound=1, directory=str(tmp_path)) as sort:
        assert list(sort(iter(()))) == []
    assert (sort.entries, sort.spilled_runs) == (0, 0) and not os.listdir(tmp_path)


def test_the_temporary_files_go_also_when_the_reader_stops_or_the_source_fails(tmp_path):
    with ExternalSort(key=lambda o: o[0], name="s", bound=2, directory=str(tmp_path)) as sort:
        stream = sort((f"k{i}",) for i in range(10, 0, -1))
        assert next(stream) == ("k1",)
        assert os.listdir(tmp_path)  # the runs are on disk while it is read
    assert not os.listdir(tmp_path)  # closed midway: removed

    def failing():
        yield from [("b",), ("a",), ("c",)]
        raise OSError("the provider went away")

    with (ExternalSort(key=lambda o: o[0], name="s", bound=1, directory=str(tmp_path)) as sort,
          pytest.raises(OSError, match="went away")):
        list(sort(failing()))
    assert sort.spilled_runs == 3 and not os.listdir(tmp_path)


def test_the_spill_goes_to_tmpdir_by_default(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR sets
    with ExternalSort(key=lambda o: o[0], name="s", bound=1) as sort:
        stream = sort([("b",), ("a",)])
        assert next(stream) == ("a",)
        assert [p.name[:9] for p in tmp_path.iterdir()] == ["csl-sort-"]
        assert oct(next(tmp_path.iterdir()).stat().st_mode & 0o777) == "0o700"
        assert list(stream) == [("b",)]
    assert not list(tmp_path.iterdir())


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        ExternalSort(key=str, name="s", bound=0)
