"""The index catalog pipeline against real PostgreSQL: diff, online builds, repair, locks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from csl.maintenance import indexes
from csl.maintenance.indexes import CatalogError, PlanItem, load_catalog

CATALOG = load_catalog()


def connector(url):
    return lambda: psycopg.connect(url, autocommit=True)


def states(url, catalog=CATALOG):
    with psycopg.connect(url, autocommit=True) as conn:
        return {s.name: s for s in indexes.diff(conn, catalog, full_catalog=catalog)}


def plan_for(url, catalog=CATALOG):
    with psycopg.connect(url, autocommit=True) as conn:
        return indexes.make_plan(indexes.diff(conn, catalog, full_catalog=catalog), catalog)


def apply_all(url, catalog=CATALOG, plan=None, **options):
    plan = plan or plan_for(url, catalog)
    options.setdefault("backoff_s", 0.05)
    return indexes.apply(connector(url), plan, catalog, run_id=f"test-{time.time_ns()}", **options)


def invalid_indexes(url):
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE NOT (i.indisvalid AND i.indisready)").fetchall()]


def test_catalog_declares_the_23_platform_indexes_and_the_splits_key_with_reasons():
    assert len(CATALOG) == 24 and [d.name for d in CATALOG if d.unique] == ["revenue_splits_license_contributor_key"]
    assert all(d.why and d.table for d in CATALOG)
    assert {d.table for d in CATALOG} >= {"users", "audio_samples", "licenses", "revenue_splits", "license_events"}


def test_malformed_catalogs_are_refused(tmp_path):
    bad = tmp_path / "catalog.sql"
    bad.write_text("-- index: idx_a\n-- why: x\nCREATE INDEX idx_b ON users (email);\n")
    with pytest.raises(CatalogError, match="creates 'idx_b'"):
        load_catalog(bad)
    bad.write_text("-- index: idx_a\nCREATE INDEX idx_a ON users (email);\n")
    with pytest.raises(CatalogError, match="why"):
        load_catalog(bad)
    bad.write_text("-- index: idx_a\n-- why: x\nCREATE INDEX idx_a ON users (email);\n" * 2)
    with pytest.raises(CatalogError, match="more than once"):
        load_catalog(bad)


def test_unknown_names_are_refused_before_any_ddl():
    with pytest.raises(CatalogError, match="not in the index catalog: idx_nope"):
        indexes.select(CATALOG, ["idx_users_role_created", "idx_nope"])


def test_all_built_from_nothing_then_ok_then_a_no_op(platform_db):
    before = states(platform_db)
    assert {s.status for n, s in before.items() if n in {d.name for d in CATALOG}} == {"missing"}
    results = apply_all(platform_db)
    assert len(results) == 24 and {r.status for r in results} == {"success"}
    assert all(r.valid and r.size_bytes > 0 and r.action == "build" for r in results)
    after = states(platform_db)
    assert {after[d.name].status for d in CATALOG} == {"ok"}
    assert apply_all(platform_db) == []
    with psycopg.connect(platform_db) as conn:
        assert conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'success') FROM csl_ops.index_builds"
                            ).fetchone() == (24, 24)


def test_an_invalid_index_from_a_failed_unique_build_is_repaired(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, role, created_at) SELECT 'dup' || g || '@x.org', 'admin',"
                     " '2020-01-01' FROM generate_series(1, 2) g")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_users_role_created ON users (role, created_at)")
        conn.execute("DELETE FROM users WHERE email LIKE 'dup%@x.org'")  # fix the data
    assert states(platform_db)["idx_users_role_created"].status == "invalid"
    results = apply_all(platform_db, catalog=indexes.select(CATALOG, ["idx_users_role_created"]))
    assert [(r.action, r.status) for r in results] == [("rebuild", "success")]
    state = states(platform_db)["idx_users_role_created"]
    assert state.status == "ok" and not state.actual.startswith("UNIQUE")
    assert invalid_indexes(platform_db) == []


def test_a_unique_index_waits_for_its_duplicates_to_go_instead_of_failing_every_week(platform_db, tmp_path):
    catalog_file = tmp_path / "catalog.sql"
    catalog_file.write_text("-- index: idx_users_status_unique\n-- why: test\n"
                            "CREATE UNIQUE INDEX idx_users_status_unique ON users (subscription_status);\n")
    catalog = load_catalog(catalog_file)
    with psycopg.connect(platform_db, autocommit=True) as conn:
        plan = indexes.make_plan(indexes.diff(conn, catalog), catalog)
        groups = conn.execute("SELECT count(DISTINCT subscription_status) FROM users").fetchone()[0]
    assert [(i.action, i.statement) for i in plan if i.name == "idx_users_status_unique"] == [("blocked", None)]
    assert f"{groups} duplicate key group(s) in users" in plan[0].reason
    assert indexes.plan_summary(plan)["blocked"] == [{"name": "idx_users_status_unique", "reason": plan[0].reason}]
    assert apply_all(platform_db, catalog=catalog) == [] and invalid_indexes(platform_db) == []


def test_a_failing_build_leaves_no_invalid_index_and_says_why(platform_db, tmp_path):
    catalog_file = tmp_path / "catalog.sql"  # an expression key: no precheck, the build itself finds the duplicates
    catalog_file.write_text("-- index: idx_users_name_unique\n-- why: test\n"
                            "CREATE UNIQUE INDEX idx_users_name_unique ON users ((subscription_status || ''));\n")
    catalog = load_catalog(catalog_file)
    results = apply_all(platform_db, catalog=catalog)
    assert results[0].status == "failed" and "UniqueViolation" in results[0].error
    assert results[0].cleaned_up == ["idx_users_name_unique"]
    assert invalid_indexes(platform_db) == []
    assert states(platform_db, catalog)["idx_users_name_unique"].status == "missing"


def test_a_drifted_definition_is_swapped(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX idx_users_role_created ON users (role)")
    state = states(platform_db)["idx_users_role_created"]
    assert state.status == "drifted" and "(role)" in state.reason
    results = apply_all(platform_db, catalog=indexes.select(CATALOG, ["idx_users_role_created"]))
    assert [(r.action, r.status) for r in results] == [("swap", "success")]
    assert states(platform_db)["idx_users_role_created"].status == "ok"
    with psycopg.connect(platform_db) as conn:
        names = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'idx_users_role%'")]
    assert names == ["idx_users_role_created"]


def test_an_unknown_index_is_reported_and_left_alone(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX idx_someone_elses ON users (name)")
    found = states(platform_db)
    assert found["idx_someone_elses"].status == "unknown"
    assert "never touched" in found["idx_someone_elses"].reason
    assert "users_pkey" not in found  # constraint-backed indexes are not "unknown"
    apply_all(platform_db)
    with psycopg.connect(platform_db) as conn:
        assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_someone_elses'").fetchone()[0] \
            .endswith("USING btree (name)")


def test_a_writer_is_never_blocked_and_loses_no_row(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("INSERT INTO license_events (license_id, event_type, created_at) "
                     "SELECT l.id, 'bulk', l.created_at FROM licenses l, generate_series(1, 60)")
    license_id = psycopg.connect(platform_db).execute("SELECT id FROM licenses LIMIT 1").fetchone()[0]
    stop = threading.Event()
    latencies: list[float] = []

    def writer():
        with psycopg.connect(platform_db, autocommit=True) as conn:
            while not stop.is_set():
                started = time.perf_counter()
                conn.execute("INSERT INTO license_events (license_id, event_type) VALUES (%s, 'during-build')",
                             (license_id,))
                latencies.append(time.perf_counter() - started)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        results = apply_all(platform_db, catalog=[d for d in CATALOG if d.table in ("license_events", "licenses")])
    finally:
        stop.set()
        thread.join(10)
    assert {r.status for r in results} == {"success"} and len(results) == 5
    assert len(latencies) > 50
    assert max(latencies) < 2.0, f"a writer waited {max(latencies):.2f}s during the builds"
    with psycopg.connect(platform_db) as conn:
        stored = conn.execute("SELECT count(*) FROM license_events WHERE event_type = 'during-build'").fetchone()[0]
    assert stored == len(latencies)


def test_a_conflicting_lock_is_retried_then_reported_with_the_blocker(platform_db):
    target = indexes.select(CATALOG, ["idx_users_role_created"])
    plan = plan_for(platform_db, target)
    with psycopg.connect(platform_db) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        results = apply_all(platform_db, catalog=target, plan=plan, lock_timeout_ms=200, max_lock_retries=2)
        elapsed = time.monotonic() - started
        holder.rollback()
    result = results[0]
    assert result.status == "failed" and result.attempts == 3
    assert "lock_timeout (200 ms) hit 3 times" in result.error
    assert any(b["pid"] == holder_pid and "LOCK TABLE users" in b["query"] for b in result.blockers), (holder_pid, result.blockers)
    assert elapsed < 30
    assert invalid_indexes(platform_db) == []
    assert states(platform_db)["idx_users_role_created"].status == "missing"


def test_an_old_transaction_blocks_mid_build_and_the_invalid_leftover_is_dropped(platform_db):
    """The build gets its catalog entry, then waits for an open writer: INVALID is cleaned up."""
    target = indexes.select(CATALOG, ["idx_users_role_created"])
    plan = plan_for(platform_db, target)
    holder = psycopg.connect(platform_db)
    holder.execute("INSERT INTO users (email) VALUES ('holder@x.org')")  # open transaction with an xid
    release = threading.Timer(3.0, holder.rollback)
    release.start()
    try:
        results = apply_all(platform_db, catalog=target, plan=plan, lock_timeout_ms=300, max_lock_retries=0,
                            cleanup_timeout_s=30)
    finally:
        release.join()
        holder.close()
    result = results[0]
    assert result.status == "failed" and result.cleaned_up == ["idx_users_role_created"]
    assert invalid_indexes(platform_db) == []
    # and the next run builds it
    assert [r.status for r in apply_all(platform_db, catalog=target)] == ["success"]


def test_builds_on_one_table_never_overlap(platform_db):
    target = [d for d in CATALOG if d.table == "users"]
    with psycopg.connect(platform_db, autocommit=True) as conn:
        plan = indexes.make_plan(indexes.diff(conn, target, full_catalog=target), target)
    by_name = {d.name: d for d in target}
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def build(item: PlanItem):
        try:
            started = time.monotonic()
            indexes.build_index(connector(platform_db), item, by_name[item.name])
            spans.append((started, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with psycopg.connect(platform_db) as slow:  # hold the table's build lock briefly from outside
        slow.execute("SELECT pg_advisory_lock(hashtext('csl_index_build:users'))")
        threads = [threading.Thread(target=build, args=(item,)) for item in plan if item.action == "build"]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert spans == [], "a build started while another held the table"
        slow.execute("SELECT pg_advisory_unlock_all()")
        for t in threads:
            t.join(60)
    assert errors == [] and len(spans) == 3
    assert {s.status for n, s in states(platform_db, target).items() if n in by_name} == {"ok"}


def test_cli_plan_apply_and_refusals(stack_env, platform_db):
    import os
    import subprocess
    import sys

    env = {**os.environ, **stack_env, "DATABASE_URL": platform_db, "CSL_ENV_FILE": os.devnull}
    env.pop("DATABASE_READ_REPLICA_URL", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "csl", "indexes", *a], capture_output=True,
                                    text=True, env=env, timeout=120, cwd=Path(__file__).parents[3], check=False)
    plan = run("plan", "--json")
    assert plan.returncode == 0 and '"build": 24' in plan.stdout.replace("\n", "").replace("  ", " ")
    dry = run("apply", "--dry-run")
    assert dry.returncode == 0 and "plan: 24 build" in dry.stdout
    assert states(platform_db)["idx_users_role_created"].status == "missing"
    for bad in (["apply", "--only", "idx_nope"], ["apply", "--lock-timeout-ms", "0"], ["apply", "--max-lock-retries", "x"]):
        refused = run(*bad)
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, (bad, refused.stderr)
    assert states(platform_db)["idx_users_role_created"].status == "missing"
    applied = run("apply", "--only", "idx_users_role_created", "idx_licenses_user_created")
    assert applied.returncode == 0 and applied.stdout.count("success  build") == 2


def test_a_retried_build_finishes_what_an_earlier_try_left(platform_db):
    """Airflow retries a build whose worker died: the plan (made before) still says ``build``. The
    earlier try may have finished the index (its backend outlived the worker), or left it INVALID
    (cut off mid-build): the retry succeeds either way, with the index valid as declared."""
    name = "idx_users_role_created"
    target = indexes.select(CATALOG, [name])
    declared = target[0]
    (item,) = [i for i in plan_for(platform_db, target) if i.name == name]
    assert item.action == "build"
    with psycopg.connect(platform_db, autocommit=True) as conn:  # the earlier try got to the end
        conn.execute(declared.statement_for(table="public.users", concurrently=True))
    result = indexes.build_index(connector(platform_db), item, declared)
    assert (result.status, result.valid, result.attempts, result.cleaned_up) == ("success", True, 0, [])
    assert states(platform_db, target)[name].status == "ok"

    with psycopg.connect(platform_db, autocommit=True) as conn:  # the earlier try was cut off mid-build
        conn.execute(psycopg.sql.SQL("DROP INDEX {}").format(psycopg.sql.Identifier(name)))
        conn.execute("INSERT INTO users (email, role, created_at) SELECT 'dup' || g || '@x.org', 'admin',"
                     " '2020-01-01' FROM generate_series(1, 2) g")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(psycopg.sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON users (role, created_at)").format(
                psycopg.sql.Identifier(name)))
        conn.execute("DELETE FROM users WHERE email LIKE 'dup%@x.org'")
    assert states(platform_db, target)[name].status == "invalid"
    result = indexes.build_index(connector(platform_db), item, declared)
    assert (result.status, result.valid, result.attempts, result.cleaned_up) == ("success", True, 1, [name])
    assert states(platform_db, target)[name].status == "ok" and invalid_indexes(platform_db) == []
