"""A sweep over providers that list in different orders (issue 14): SeaweedFS (path order) beside
moto's S3 server (byte order, like AWS), on the seeded platform database.

The keys are chosen so the two orders disagree inside a cell (``a/b`` vs ``a-c``, ``a.d``,
``a0``, ``a~``, ``aé``); a few real defects are planted on the byte-order provider, and the
sweep, merged in either order, must report exactly those.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid

import psycopg
import pytest

from csl.db import Database
from csl.storage import StorageProvider, integrity, keyorder
from csl.storage.integrity import SweepOptions, run_sweep

from ..conftest import MOTO_PROVIDER

# after the swept prefix ordertest/m<hex>: the (depth 2) cells ordertest/m<hex>p/ and
# ordertest/m<hex>q/ (subtrees), and ordertest/* (loose: keys directly in ordertest/)
CELL_P = ["p/a/b", "p/a-c", "p/a.d", "p/a0", "p/ab", "p/a~", "p/aé", "p/x/y/z", "p/a/a"]
CELL_Q = ["q/m/n.wav", "q/m-n.wav", "q/m.n.wav", "q/mn.wav"]
LOOSE = ["-top.png", ".top.png", "0top.png", "~top.png"]
MISSING_ON_AWS = "p/a.d"  # referenced, on the primary, not on aws
ORPHAN_ON_AWS = "q/m-n.wav"  # on aws only, referenced by nothing
RESIZED_ON_AWS = "p/aé"  # aws holds other (longer) bytes than the primary


def _body(key: str) -> bytes:
    return f"RIFF {key}".encode()


@pytest.fixture
def mixed(platform, settings, moto_settings, moto_provider):
    """Objects on the primary (SeaweedFS, path order) and aws (moto, byte order) under a fresh
    prefix, referenced from users.avatar_url; everything removed and swept clean afterwards."""
    base = f"ordertest/m{uuid.uuid4().hex[:8]}"
    primary = StorageProvider(settings.provider("primary"))
    both = dataclasses.replace(settings, storage=(settings.provider("primary"), moto_settings))
    referenced = [k for k in CELL_P + CELL_Q + LOOSE if k != ORPHAN_ON_AWS]
    on_primary = referenced
    on_aws = [k for k in referenced if k != MISSING_ON_AWS] + [ORPHAN_ON_AWS]
    for key in on_primary:
        primary.put(base + key, _body(key), content_type="image/png")
    for key in on_aws:
        body = _body(key) + (b"-and-more" if key == RESIZED_ON_AWS else b"")
        moto_provider.put(base + key, body, content_type="image/png")
    users = [str(uuid.uuid4()) for _ in referenced]
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO users (id, email, avatar_url) VALUES (%s, %s, %s)",
                        [(uid, f"{uid}@example.org", base + key) for uid, key in zip(users, referenced, strict=True)])
    try:
        yield {"base": base, "settings": both, "primary": primary, "aws": moto_provider}
    finally:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE id = ANY(%s::uuid[])", (users,))
        for key in on_primary:
            primary.delete(base + key)
        for key in on_aws:
            moto_provider.delete(base + key)
        _sweep(both, prefix=base)  # nothing left: every finding under the prefix closes
        assert not _open(settings, base)


def _sweep(settings, **options) -> integrity.SweepSummary:
    summary = run_sweep(settings, run_key=f"test-{uuid.uuid4()}", shards=options.pop("shards", 2), workers=1,
                        options=SweepOptions(**options), provider_names=["primary", MOTO_PROVIDER])
    assert not summary.failed and not summary.errors, summary
    return summary


def _open(settings, base: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(settings.database.primary_url) as conn:
        rows = conn.execute("SELECT kind, object_key, provider FROM csl_ops.storage_findings "
                            "WHERE resolved_at IS NULL AND starts_with(object_key, %s)", (base,)).fetchall()
    return {(kind, key.removeprefix(base), provider) for kind, key, provider in rows}


def test_the_keys_really_list_in_two_orders(mixed):
    base, primary, aws = mixed["base"], mixed["primary"], mixed["aws"]
    listed = {p.name: [o.key.removeprefix(base) for o in p.iter_objects(base + "p/")] for p in (primary, aws)}
    assert listed["primary"] == sorted(listed["primary"], key=keyorder.order_key("path"))
    assert listed[MOTO_PROVIDER] == sorted(listed[MOTO_PROVIDER], key=keyorder.order_key("byte"))
    assert listed["primary"][:3] == ["p/a/a", "p/a/b", "p/a-c"]  # folder a/ first: path order
    assert listed[MOTO_PROVIDER][:3] == ["p/a-c", "p/a/a", "p/a/b"]  # "-" before "/": byte order


@pytest.mark.parametrize(("key_order", "deep_rate"), [("path", 0.0), ("byte", 0.0), ("byte", 1.0)])
def test_a_mixed_order_pair_reports_exactly_the_planted_defects(mixed, settings, key_order, deep_rate):
    summary = _sweep(mixed["settings"], prefix=mixed["base"], key_order=key_order, deep_rate=deep_rate)
    expected = {("missing", MISSING_ON_AWS, MOTO_PROVIDER), ("orphan", ORPHAN_ON_AWS, MOTO_PROVIDER),
                ("size_mismatch", RESIZED_ON_AWS, MOTO_PROVIDER)}
    assert _open(settings, mixed["base"]) == expected
    assert summary.findings == {"missing": {MOTO_PROVIDER: 1}, "orphan": {MOTO_PROVIDER: 1},
                                "size_mismatch": {MOTO_PROVIDER: 1}}
    assert summary.cells == 3 and summary.db_refs == len(CELL_P + CELL_Q + LOOSE) - 1
    # the provider whose order is not the merge order had its subtree cells' listings sorted (the
    # loose cell lists the same in both orders); the other streamed straight through
    other = MOTO_PROVIDER if key_order == "path" else "primary"
    entries = len(CELL_P + CELL_Q) - 1  # aws lacks one and holds the orphan; the primary the other way round
    assert summary.reordered == {other: {"entries": entries, "spilled_runs": 0}}
    if deep_rate:
        assert summary.deep_verified == len(CELL_P + CELL_Q + LOOSE) - 1  # every referenced key, downloaded
    again = _sweep(mixed["settings"], prefix=mixed["base"], key_order="path" if key_order == "byte" else "byte")
    assert again.new == 0 and again.closed == 0 and _open(settings, mixed["base"]) == expected


def test_a_cell_beyond_the_sort_buffer_spills_to_temporary_files_that_are_removed(mixed, settings, tmp_path,
                                                                                   monkeypatch):
    spill = tmp_path / "tmpdir"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))  # what TMPDIR sets for the sweep's process
    monkeypatch.setattr(keyorder, "SORT_BUFFER", 2)
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(keyorder.tempfile, "mkdtemp", mkdtemp)
    summary = _sweep(mixed["settings"], prefix=mixed["base"], key_order="path")
    assert summary.finding_counts == {"missing": 1, "orphan": 1, "size_mismatch": 1}
    runs = summary.reordered[MOTO_PROVIDER]
    assert runs["entries"] == 8 + 4 and runs["spilled_runs"] == 4 + 2  # aws holds 8 in p/ and 4 in q/: by 2
    assert made and all(os.path.dirname(d) == str(spill) for d in made)  # the runs went to TMPDIR …
    assert not os.listdir(spill)  # … and are gone


def test_a_provider_declared_in_the_wrong_order_stops_its_shard_naming_it(mixed, settings, moto_settings):
    # SeaweedFS declared "byte": its path-order listing breaks the declared order
    wrong = [StorageProvider(dataclasses.replace(settings.provider("primary"), listing_order="byte")),
             StorageProvider(moto_settings)]
    # moto declared "path": its byte-order listing breaks that one
    wrong_aws = [StorageProvider(settings.provider("primary")),
                 StorageProvider(dataclasses.replace(moto_settings, listing_order="path"))]
    for providers, name, setting in ((wrong, "primary", "MINIO_LISTING_ORDER"),
                                     (wrong_aws, MOTO_PROVIDER, "S3_LISTING_ORDER")):
        for key_order in ("path", "byte"):
            options = SweepOptions(key_order=key_order, prefix=mixed["base"])
            with Database(settings.require_database()) as db:
                with db.connect_direct() as conn:
                    plan = integrity.plan_sweep(conn, providers, run_key=f"test-{uuid.uuid4()}", shards=1,
                                                options=options)
                with pytest.raises(integrity.ListingOrderError,
                                   match=rf"^provider '{name}' listed .* after .*: not in (byte |path )?order; "
                                         rf"provider '{name}' declares listing order .*: set {setting} "
                                         r"\(connection extra listing_order\)"):
                    integrity.sweep_and_record(db, providers, plan.shards()[0], options=options)
                with db.connect_direct() as conn:
                    summary = integrity.finish_planned(conn, plan.as_dict(), options=options)
            assert [f["shard"] for f in summary.failed] == [0] and setting in summary.failed[0]["error"]
    # nothing was written: the planted defects were never recorded
    assert _open(settings, mixed["base"]) == set()


def test_a_sweep_never_closes_a_replication_conflict(mixed, settings):
    base = mixed["base"]
    first = _sweep(mixed["settings"], prefix=base)
    gone_cell = base + "gone/"  # a cell no provider and no row has any more: finish_sweep's closing
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        # conflicts are a replication run's findings (the schema requires the run that found them)
        run = conn.execute("INSERT INTO csl_ops.replication_runs (run_key, mode, providers) "
                           "VALUES (%s, 'findings', '{primary}') RETURNING id", (f"test-{uuid.uuid4()}",)).fetchone()[0]
        conn.execute(
            "INSERT INTO csl_ops.storage_findings (kind, object_key, provider, cell, detail, depends_on, "
            "first_sweep_id, last_sweep_id, last_replication_id) VALUES "
            "('replication_conflict', %(k1)s, 'primary', %(c1)s, '{}', '{primary}', %(s)s, %(s)s, %(r)s), "
            "('replication_conflict', %(k2)s, 'primary', %(c2)s, '{}', '{primary}', %(s)s, %(s)s, %(r)s)",
            {"k1": base + "p/ab", "c1": base + "p/", "k2": gone_cell + "x.wav", "c2": gone_cell,
             "s": first.sweep_id, "r": run})
    try:
        later = _sweep(mixed["settings"], prefix=base)
        assert later.closed == 0
        assert {f for f in _open(settings, base) if f[0] == "replication_conflict"} == {
            ("replication_conflict", "p/ab", "primary"), ("replication_conflict", "gone/x.wav", "primary")}
    finally:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("DELETE FROM csl_ops.storage_findings WHERE kind = 'replication_conflict' "
                         "AND starts_with(object_key, %s)", (base,))
