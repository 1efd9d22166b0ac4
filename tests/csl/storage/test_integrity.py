"""The integrity sweep against the real SeaweedFS providers and the seeded platform database."""

from __future__ import annotations

import functools
import operator
import uuid

import psycopg
import pytest

from csl.db import Database
from csl.errors import ProviderUnavailable
from csl.storage import StorageProvider, integrity
from csl.storage.integrity import SweepOptions, run_sweep

SEEDED = ("samples/", "generations/")  # other tests upload elsewhere (uploads/, tmp/ …)


@pytest.fixture
def providers(settings):
    return StorageProvider(settings.provider("primary")), StorageProvider(settings.provider("fallback"))


def _open(settings, **where) -> set[tuple[str, str, str]]:
    with psycopg.connect(settings.database.primary_url) as conn:
        rows = conn.execute("SELECT kind, object_key, provider FROM csl_ops.storage_findings "
                            "WHERE resolved_at IS NULL").fetchall()
    return {r for r in rows if r[1].startswith(SEEDED)}


def _sweep(settings, **options) -> integrity.SweepSummary:
    shards = options.pop("shards", 4)
    summary = run_sweep(settings, run_key=f"test-{uuid.uuid4()}", shards=shards, workers=2,
                        options=SweepOptions(**options))
    assert not summary.failed and not summary.errors, summary
    return summary


def _seeded_defects(platform) -> set[tuple[str, str, str]]:
    d = platform["defects"]
    return (
        {("missing", k, p) for k in d["missing"] for p in ("primary", "fallback")}
        | {("missing", k, "fallback") for k in d["unreplicated"]}
        | {("fallback_only", k, "fallback") for k in d["fallback_only"]}
        | {("checksum_mismatch", k, "primary") for k in d["corrupt"]}
        | {("size_mismatch", k, "fallback") for k in d["truncated"]}
        | {("orphan", k, "primary") for k in d["orphan"]}
    )


def test_every_seeded_defect_is_found_and_nothing_else(platform, settings):
    d = platform["defects"]
    expected = _seeded_defects(platform)
    summary = _sweep(settings)
    assert summary.shards_done == summary.shards == 4 and not summary.failed
    assert _open(settings) == expected
    # every object of both buckets was listed, every database reference read
    with psycopg.connect(settings.database.primary_url) as conn:
        refs = conn.execute("SELECT (SELECT count(*) FROM audio_samples) + (SELECT count(result_url) FROM generations) "
                            "+ (SELECT count(avatar_url) FROM users)").fetchone()[0]
        assert summary.db_refs == refs
        assert summary.listed["primary"] >= refs - len(d["missing"]) - len(d["fallback_only"]) + len(d["orphan"])
        detail = conn.execute("SELECT detail FROM csl_ops.storage_findings WHERE kind = 'size_mismatch' "
                              "AND resolved_at IS NULL AND object_key = %s", (d["truncated"][0],)).fetchone()[0]
        assert detail["actual"] * 2 in (detail["expected"], detail["expected"] - 1)


def test_rerun_refreshes_findings_and_a_repaired_object_is_closed(platform, settings, providers):
    primary, fallback = providers
    _sweep(settings)
    before = _open(settings)
    again = _sweep(settings, shards=3)
    assert again.new == 0 and _open(settings) == before  # same findings, not duplicated
    key = platform["defects"]["unreplicated"][0]
    fallback.put(key, primary.get(key))  # what the replication pipeline will do
    try:
        repaired = _sweep(settings)
        assert ("missing", key, "fallback") not in _open(settings)
        assert _open(settings) == before - {("missing", key, "fallback")}
        assert repaired.closed == 1
        with psycopg.connect(settings.database.primary_url) as conn:
            rows = conn.execute("SELECT count(*) FILTER (WHERE resolved_at IS NULL), "
                                "count(*) FILTER (WHERE resolved_sweep_id = %s) FROM csl_ops.storage_findings "
                                "WHERE object_key = %s AND kind = 'missing'", (repaired.sweep_id, key)).fetchone()
        assert rows == (0, 1)  # a reused stack keeps the closed findings of earlier sessions
    finally:
        fallback.delete(key)
    _sweep(settings)
    assert _open(settings) == before


def test_corrupt_copies_with_good_metadata_are_caught_only_by_deep_verification(platform, settings, providers):
    primary, fallback = providers
    special = {k for keys in platform["defects"].values() for k in keys}
    with psycopg.connect(settings.database.primary_url) as conn:
        key = next(k for (k,) in conn.execute("SELECT file_url FROM audio_samples ORDER BY file_url")
                   if k not in special)
    original = primary.get(key)
    head = primary.head(key)
    rotten = bytearray(original)
    rotten[len(rotten) // 3] ^= 0x55
    for p in (primary, fallback):  # same rot on both copies: sizes and ETags agree with each other
        p.client.put_object(Bucket=p.bucket, Key=key, Body=bytes(rotten), ContentType=head["content_type"],
                            Metadata=head["metadata"])
    cell = integrity.cell_of(key, 2)
    try:
        shallow = _sweep(settings, prefix=cell, deep_rate=0.0)
        assert not any(f[1] == key for f in _open(settings))
        assert shallow.deep_verified == 0
        deep = _sweep(settings, prefix=cell, deep_rate=1.0)
        assert {f for f in _open(settings) if f[1] == key} == {("checksum_mismatch", key, "primary"),
                                                               ("checksum_mismatch", key, "fallback")}
        assert deep.deep_verified >= 1
        # an open checksum finding is re-verified by every later sweep, sampled or not
        for p in (primary, fallback):
            p.put(key, original, content_type=head["content_type"])
        healed = _sweep(settings, prefix=cell, deep_rate=0.0)
        assert not any(f[1] == key for f in _open(settings)) and healed.closed == 2
    finally:
        for p in (primary, fallback):
            p.put(key, original, content_type=head["content_type"])


def test_a_provider_down_mid_sweep_fails_its_shards_by_name_and_writes_nothing(platform, settings, providers,
                                                                                service_down):
    options = SweepOptions()
    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        cells = integrity.discover_cells(conn, providers, options)
        plan = integrity.plan_shards(cells, 2)
        sweep_id = integrity.start_sweep(conn, run_key=f"test-{uuid.uuid4()}", providers=providers,
                                         options=options, cells=len(cells))
        before = conn.execute("SELECT count(*), max(last_sweep_id) FROM csl_ops.storage_findings").fetchone()
        service_down("s3-fallback")
        with pytest.raises(ProviderUnavailable, match="fallback"):
            integrity.sweep_shard(lambda: db.connect_direct(autocommit=False), providers, sweep_id=sweep_id,
                                  shard=0, cells=plan[0], options=options)
        integrity.record_shard_failure(conn, sweep_id=sweep_id, shard=0, cells=plan[0],
                                       error=ProviderUnavailable("fallback", "cannot reach it"))
        summary = integrity.finish_sweep(conn, sweep_id=sweep_id, shards=len(plan), all_cells=cells, options=options)
        after = conn.execute("SELECT count(*), max(last_sweep_id) FROM csl_ops.storage_findings").fetchone()
        status = conn.execute("SELECT status FROM csl_ops.storage_sweeps WHERE id = %s", (sweep_id,)).fetchone()
    assert after == before  # no finding written, none refreshed, none closed
    assert status == ("failed",)
    assert summary.failed == [{"shard": 0, "provider": "fallback",
                                  "error": "storage provider 'fallback': cannot reach it"}]
    assert summary.not_run == [1]


def test_a_listing_out_of_its_providers_declared_order_is_refused_not_misreported(platform, settings, providers):
    import dataclasses

    primary, _ = providers
    base = f"ordertest/{uuid.uuid4().hex[:8]}/"
    keys = [base + "a/b.wav", base + "a-b.wav"]  # SeaweedFS lists a/b.wav first; byte order puts a-b.wav first
    for key in keys:
        primary.put(key, b"RIFF")
    # the primary declared as listing in byte order, which SeaweedFS does not: refused under either merge order
    wrong = [StorageProvider(dataclasses.replace(settings.provider("primary"), listing_order="byte")), providers[1]]
    try:
        for key_order in ("byte", "path"):
            with (pytest.raises(integrity.ListingOrderError,
                                match=r"^provider 'primary' listed .*: not in (byte )?order; provider 'primary' "
                                      r"declares listing order 'byte': set MINIO_LISTING_ORDER \(connection extra "
                                      r"listing_order\)"),
                  Database(settings.require_database()) as db, db.connect_direct() as conn):
                options = SweepOptions(key_order=key_order, prefix=base)
                cells = integrity.discover_cells(conn, wrong, options)
                integrity.sweep_shard(lambda: db.connect_direct(autocommit=False), wrong,
                                      sweep_id=_sweep_id(db, wrong), shard=0, cells=cells, options=options)
        # declared rightly (path), a byte-order merge brings its listing into byte order
        for key_order in ("byte", "path"):
            summary = _sweep(settings, prefix=base, key_order=key_order)
            assert summary.findings == {"orphan": {"primary": 2}}
            assert set(summary.reordered) == ({"primary", "fallback"} if key_order == "byte" else set())
    finally:
        for key in keys:
            primary.delete(key)
        _sweep(settings, prefix=base)


def _sweep_id(db: Database, providers) -> int:
    with db.connect_direct() as conn:
        return integrity.start_sweep(conn, run_key=f"test-{uuid.uuid4()}", providers=providers,
                                     options=SweepOptions(), cells=0)


def test_cells_and_shards():
    assert integrity.cell_of("samples/0a/x.wav", 2) == "samples/0a/"
    assert integrity.cell_of("samples/x.wav", 2) == "samples/*"
    assert integrity.cell_of("x.wav", 2) == "*"
    assert integrity.cell_of("a/b/c/d", 1) == "a/"
    shards = integrity.plan_shards([f"c{i:02d}/" for i in range(10)], 4)
    assert [len(s) for s in shards] == [3, 3, 2, 2] and functools.reduce(operator.iadd, shards, []) == [f"c{i:02d}/" for i in range(10)]
    assert integrity.plan_shards(["a/"], 8) == [["a/"]]
    with pytest.raises(integrity.SweepError, match="deep_rate"):
        SweepOptions(deep_rate=2)
    with pytest.raises(integrity.SweepError, match="key_order"):
        SweepOptions(key_order="random")


def test_a_folder_prefix_at_its_own_depth_is_its_one_cell():
    for prefix, depth in (("samples/0a/", 2), ("samples/", 1), ("a/b/c/", 3)):
        cells = integrity.prefix_cells(SweepOptions(prefix=prefix, depth=depth))
        assert cells == [prefix]
        # every key under it is in that cell, however deep
        assert {integrity.cell_of(prefix + rest, depth) for rest in ("x", "x/y", "x/y/z.wav")} == {prefix}
    for prefix, depth in (("samples/0a", 1), ("", 1), ("samples/0a/", 1), ("samples/", 2)):
        assert integrity.prefix_cells(SweepOptions(prefix=prefix, depth=depth)) is None  # to be discovered
    assert integrity.prefix_cells(SweepOptions(prefix="_quarantine/x/", depth=2)) == []  # excluded


def test_cli_sweep_prints_findings_and_counts_and_refuses_bad_input(platform, stack_env):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull}
    run = lambda *a: subprocess.run([sys.executable, "-m", "csl", "storage", *a], capture_output=True,
                                    text=True, env=env, timeout=300, check=False)
    done = run("sweep", "--prefix", "samples/", "--deep-sample", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    orphans = set(platform["defects"]["orphan"])
    assert {f["key"] for f in out["findings"] if f["kind"] == "orphan"} == {k for k in orphans
                                                                           if k.startswith("samples/")}
    assert all(f["key"].startswith("samples/") for f in out["findings"])
    assert out["summary"]["findings"]["missing"]["fallback"] >= 1
    human = run("sweep", "--prefix", "samples/")
    assert human.returncode == 0 and "findings {" in human.stdout and "orphan" in human.stdout
    bad = run("sweep", "--deep-sample", "1.5")
    assert bad.returncode == 2 and "--deep-sample" in bad.stderr
    bad = run("cleanup", "--temp-prefix", "_quarantine/")
    assert bad.returncode == 2 and "temp_prefix" in bad.stderr


def test_a_transient_server_error_while_listing_is_retried_a_persistent_one_names_the_provider(settings):
    import httpx

    from csl.errors import StorageError

    page = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<IsTruncated>false</IsTruncated><Contents><Key>samples/0a/x.wav</Key><Size>12</Size>"
            b"<ETag>&quot;abc&quot;</ETag><LastModified>2026-11-25T10:00:00.000Z</LastModified></Contents>"
            b"</ListBucketResult>")
    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
             b"<Message>We encountered an internal error, please try again.</Message></Error>")
    answers: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        answers.append(1)
        if len(answers) <= failures:
            return httpx.Response(500, content=error)
        return httpx.Response(200, content=page)

    provider = StorageProvider(settings.provider("fallback"))
    provider.__dict__["_http"] = httpx.Client(transport=httpx.MockTransport(handler))
    failures = 2
    items, token = provider.list_page("samples/")
    assert [(o.key, o.size, o.etag) for o in items] == [("samples/0a/x.wav", 12, "abc")] and token is None
    assert len(answers) == 3
    answers.clear()
    failures = 99
    with pytest.raises(StorageError, match="'fallback'.*HTTP 500 InternalError"):
        provider.list_page("samples/")
    assert len(answers) == 5


# -- issue 12, item 8: a sweep closes only what it swept; the reference copy is the primary's --
def _sweep_of(settings, names, **options) -> integrity.SweepSummary:
    summary = run_sweep(settings, run_key=f"test-{uuid.uuid4()}", shards=2, workers=1,
                        options=SweepOptions(**options), provider_names=names)
    assert not summary.failed and not summary.errors, summary
    return summary


def test_a_sweep_of_some_providers_closes_only_the_findings_it_could_judge(platform, settings):
    d = platform["defects"]
    _sweep(settings)
    before = _open(settings)
    assert any(f[2] == "fallback" for f in before) and any(f[2] == "primary" for f in before)

    primary_only = _sweep_of(settings, ["primary"])
    # the fallback's missing/size/fallback_only findings stay open; from the primary alone, the
    # objects only the fallback holds are simply missing on the primary
    assert _open(settings) == before | {("missing", k, "primary") for k in d["fallback_only"]}
    assert set(primary_only.listed) == {"primary"} and primary_only.providers == ["primary"]

    fallback_only = _sweep_of(settings, ["fallback"])
    assert "fallback_only" not in fallback_only.findings  # without the primary there is no reference to lack
    assert _open(settings) == before | {("missing", k, "primary") for k in d["fallback_only"]}

    _sweep(settings)  # both again: the primary-only view is superseded, nothing else changed
    assert _open(settings) == before
    with psycopg.connect(settings.database.primary_url) as conn:
        shards = conn.execute("SELECT DISTINCT sh.providers FROM csl_ops.storage_sweep_shards sh JOIN "
                              "csl_ops.storage_sweeps s ON s.id = sh.sweep_id WHERE s.id = ANY(%s)",
                              ([primary_only.sweep_id, fallback_only.sweep_id],)).fetchall()
    assert sorted(shards) == [(["fallback"],), (["primary"],)]


def test_the_reference_copy_is_the_primary_whatever_order_the_providers_are_given_in(platform, settings):
    _sweep(settings)
    expected = _open(settings)
    reversed_ = _sweep_of(settings, ["fallback", "primary"])
    assert _open(settings) == expected and reversed_.new == 0 and reversed_.closed == 0
    assert reversed_.providers == ["primary", "fallback"]
    straight = _sweep_of(settings, ["primary", "fallback"])
    assert straight.findings == reversed_.findings
    assert reversed_.findings["fallback_only"] == {"fallback": len(platform["defects"]["fallback_only"])}


def test_avatars_and_url_form_references_are_not_orphans(platform, settings, providers):
    primary, _fallback = providers
    folder = f"avatars/t{uuid.uuid4().hex[:8]}/"
    keys = [f"{folder}{i}.png" for i in range(6)]
    body = b"\x89PNG\r\n\x1a\n" + bytes(24)
    for key in keys:
        for p in providers:
            p.put(key, body, content_type="image/png")
    bucket, endpoint = primary.bucket, primary.settings.endpoint_url
    forms = [keys[0],                                                   # a key
             f"{endpoint}/{bucket}/{keys[1]}",                          # path-style S3
             f"https://{bucket}.s3.us-east-1.amazonaws.com/{keys[2]}?X-Amz-Expires=60",  # virtual-hosted, signed
             f"https://cdn.culturalsoundlab.com/audio/{keys[3]}#t=1",   # the CDN
             f"/audio/{keys[4]}"]                                       # the edge, relative
    users = [str(uuid.uuid4()) for _ in forms]
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        for uid, url in zip(users, forms, strict=True):
            conn.execute("INSERT INTO users (id, email, avatar_url) VALUES (%s, %s, %s)",
                         (uid, f"{uid}@example.org", url))
    try:
        summary = _sweep(settings, prefix=folder, shards=1)
        assert summary.db_refs == len(forms)
        assert {f for f in _open_all(settings) if f[1].startswith(folder)} == {
            ("orphan", keys[5], "primary"), ("orphan", keys[5], "fallback")}
    finally:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE id = ANY(%s::uuid[])", (users,))
        for key in keys:
            for p in providers:
                p.delete(key)
        _sweep(settings, prefix=folder, shards=1)
    assert not any(f[1].startswith(folder) for f in _open_all(settings))


def _open_all(settings) -> set[tuple[str, str, str]]:
    with psycopg.connect(settings.database.primary_url) as conn:
        return set(conn.execute("SELECT kind, object_key, provider FROM csl_ops.storage_findings "
                                "WHERE resolved_at IS NULL").fetchall())


def test_emptied_folders_are_not_objects(platform, settings, providers):
    primary, _ = providers
    folder = f"ordertest/{uuid.uuid4().hex[:8]}/"
    primary.put(folder + "x.wav", b"RIFF")
    primary.delete(folder + "x.wav")  # SeaweedFS keeps the folder and lists it as an object of its own
    summary = _sweep(settings, prefix=folder, shards=1)
    assert summary.findings == {} and not any(f[1].startswith(folder) for f in _open_all(settings))


def test_a_shard_refuses_providers_its_sweep_was_not_planned_for(platform, settings, providers):
    with Database(settings.require_database()) as db:
        sweep_id = _sweep_id(db, providers[:1])
        with pytest.raises(integrity.SweepError, match="planned for providers"):
            integrity.sweep_shard(lambda: db.connect_direct(autocommit=False), providers, sweep_id=sweep_id,
                                  shard=0, cells=["samples/0a/"], options=SweepOptions())


# -- issue 13: the rules the Airflow glue carried, now csl's ------------------------------------
def test_a_provider_that_cannot_be_listed_while_planning_is_named_and_keeps_its_kind(platform, settings, providers):
    import dataclasses

    down = StorageProvider(dataclasses.replace(settings.provider("fallback"), endpoint_url="http://127.0.0.1:9"),
                           max_attempts=1)
    with (Database(settings.require_database()) as db, db.connect_direct() as conn,
          pytest.raises(ProviderUnavailable, match=r"^cannot list provider 'fallback': storage provider")):
        integrity.plan_sweep(conn, [providers[0], down], run_key=f"test-{uuid.uuid4()}", shards=2,
                             options=SweepOptions())


def test_a_planned_sweep_records_its_failed_shard_and_fails_naming_it(platform, settings, providers):
    import dataclasses

    options = SweepOptions.for_settings(settings, prefix="samples/0")
    down = StorageProvider(dataclasses.replace(settings.provider("fallback"), endpoint_url="http://127.0.0.1:9"),
                           max_attempts=1)
    with Database(settings.require_database()) as db:
        with db.connect_direct() as conn:
            plan = integrity.plan_sweep(conn, list(providers), run_key=f"test-{uuid.uuid4()}", shards=2,
                                        options=options)
        assert plan.as_dict()["shards"] == len(plan.shards()) == 2
        first, second = plan.shards()
        assert isinstance(integrity.sweep_and_record(db, list(providers), first, options=options),
                          integrity.ShardSummary)
        with pytest.raises(ProviderUnavailable, match="fallback"):
            integrity.sweep_and_record(db, [providers[0], down], second, options=options)
        with db.connect_direct() as conn:
            summary = integrity.finish_planned(conn, plan.as_dict(), options=options)
    assert summary.shards_done == 1 and [f["shard"] for f in summary.failed] == [1]
    assert summary.failed[0]["provider"] == "fallback" and summary.error.startswith("shard 1: storage provider")
    with pytest.raises(integrity.ShardsFailed, match=r"^1 of 2 shards did not sweep \(provider 'fallback' failed\)"):
        summary.check()


# -- issue 14: the inventory read goes to the replica ------------------------------------------
def _shard_records(settings, sweep_id: int) -> list[tuple[str, float | None]]:
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute("SELECT summary ->> 'inventory_from', (summary ->> 'inventory_lag_s')::float8 "
                            "FROM csl_ops.storage_sweep_shards WHERE sweep_id = %s ORDER BY shard",
                            (sweep_id,)).fetchall()


def test_the_inventory_is_read_on_the_replica_and_with_it_stopped_on_the_primary(platform, settings,
                                                                                service_down):
    on_replica = _sweep(settings)
    assert on_replica.inventory_from == {"replica": 4}
    assert _open(settings) == _seeded_defects(platform)  # the replica's inventory gives the right findings
    records = _shard_records(settings, on_replica.sweep_id)
    assert [r[0] for r in records] == ["replica"] * 4 and all(0 <= r[1] < 30 for r in records)

    service_down("pg-replica")
    on_primary = _sweep(settings)
    assert on_primary.inventory_from == {"primary": 4}
    assert on_primary.findings == on_replica.findings and on_primary.new == on_primary.closed == 0
    assert _open(settings) == _seeded_defects(platform)
    assert _shard_records(settings, on_primary.sweep_id) == [("primary", None)] * 4
    with psycopg.connect(settings.database.primary_url) as conn:
        recorded = conn.execute("SELECT summary -> 'inventory_from' FROM csl_ops.storage_sweeps WHERE id = %s",
                                (on_primary.sweep_id,)).fetchone()[0]
    assert recorded == {"primary": 4}  # the sweep's own record says so too


class _ReplicaRouted(Database):
    """Reads routed to the replica whatever its state: what inventory_connection checks itself."""

    def read_route(self, *, refresh: bool = False):
        from csl.db import ReadRoute

        return ReadRoute("replica", "routed there by the test", 0.0)


def test_the_replica_serves_the_inventory_only_once_it_has_replayed_what_the_primary_committed(
        platform, settings, stack):
    import dataclasses

    bounded = dataclasses.replace(settings.require_database(), max_replica_lag_s=1.0)
    uid = str(uuid.uuid4())
    stack.psql("SELECT pg_wal_replay_pause()", port_name="pg_replica")
    try:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("INSERT INTO users (id, email) VALUES (%s, %s)", (uid, f"{uid}@example.org"))
        with _ReplicaRouted(bounded) as db, integrity.inventory_connection(db) as (conn, route):
            assert route.target == "primary" and "had not replayed the primary's WAL position" in route.reason
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert route.lag_s >= 1.0  # it waited out the bound, no longer
    finally:
        stack.psql("SELECT pg_wal_replay_resume()", port_name="pg_replica")
    try:
        with _ReplicaRouted(bounded) as db, integrity.inventory_connection(db) as (conn, route):
            assert route.target == "replica" and route.lag_s < 1.0
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            # its snapshot holds what the primary committed before the read began
            assert conn.execute("SELECT count(*) FROM users WHERE id = %s", (uid,)).fetchone() == (1,)
    finally:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE id = %s", (uid,))


def test_a_replica_that_gives_up_midway_means_the_shard_is_swept_again_from_the_primary(
        platform, settings, providers, stack, monkeypatch):
    from contextlib import contextmanager

    real = integrity.inventory_connection
    killed: list[int] = []

    @contextmanager
    def replica_that_dies(db, *, replica=True):
        with real(db, replica=replica) as (conn, route):
            if route.target == "replica":  # a conflict with recovery, a restart: the backend goes away
                killed.append(conn.info.backend_pid)
                stack.psql(f"SELECT pg_terminate_backend({int(killed[-1])})", port_name="pg_replica")
            yield conn, route

    options = SweepOptions.for_settings(settings, prefix="samples/0")
    with Database(settings.require_database()) as db:
        with db.connect_direct() as conn:
            plan = integrity.plan_sweep(conn, list(providers), run_key=f"test-{uuid.uuid4()}", shards=1,
                                        options=options)
        straight = integrity.sweep_and_record(db, list(providers), plan.shards()[0], options=options)
        assert straight.inventory_from == "replica"
        monkeypatch.setattr(integrity, "inventory_connection", replica_that_dies)
        again = integrity.sweep_and_record(db, list(providers), plan.shards()[0], options=options)
        with db.connect_direct() as conn:
            summary = integrity.finish_planned(conn, plan.as_dict(), options=options)
    assert killed and again.inventory_from == "primary" and again.inventory_lag_s is None
    assert again.findings == straight.findings and again.db_refs == straight.db_refs > 0
    assert summary.inventory_from == {"primary": 1} and not summary.failed
