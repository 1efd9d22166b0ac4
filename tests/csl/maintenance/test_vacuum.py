"""Evidence-based VACUUM/ANALYZE against real PostgreSQL statistics."""

from __future__ import annotations

import time
from datetime import UTC

import psycopg
import pytest

from csl.maintenance import vacuum
from csl.maintenance.vacuum import MaintenanceError, Policy
from csl.migrations import migrate

from ...conftest import wait_for_cleanup_horizon


@pytest.fixture
def db_url(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("csl_ops",))
        conn.execute("ANALYZE")
    return fresh_database


def connector(url):
    return lambda: psycopg.connect(url, autocommit=True)


def make_table(url, name, rows, *, options="autovacuum_enabled = false", analyze=True):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, payload text) WITH ({options})")
        conn.execute(f"INSERT INTO {name} SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g")
        if analyze:
            conn.execute(f"VACUUM ANALYZE {name}")


def plan(url, **policy):
    with psycopg.connect(url, autocommit=True) as conn:
        chosen, skipped = vacuum.choose(vacuum.gather(conn), vacuum.settings(conn), Policy(**policy))
    return {c.table: c for c in chosen}, skipped


def wait_for_stats(url, table, column, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            value = conn.execute(f"SELECT {column} FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()[0]
        if predicate(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"{table}.{column} never satisfied the condition (last {value})")


def run_all(url, *, wait_horizon=True, **kwargs):
    if wait_horizon:
        wait_for_cleanup_horizon(url)
    policy = kwargs.pop("policy", Policy())
    return vacuum.run(connector(url), policy, run_id=f"test-{time.time_ns()}", **kwargs)


def test_a_bloated_table_is_vacuumed_and_its_dead_tuples_drop(db_url):
    make_table(db_url, "bloated", 20_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE bloated SET payload = payload || 'y'")
    wait_for_stats(db_url, "bloated", "n_dead_tup", lambda v: v >= 20_000)
    chosen, _ = plan(db_url)
    assert chosen["bloated"].reason == "dead_tuples" and chosen["bloated"].action == "vacuum"
    assert "20,000 dead tuples" in chosen["bloated"].detail
    outcome = run_all(db_url)
    result = next(r for r in outcome["results"] if r["table"] == "bloated")
    assert result["status"] == "done"
    assert result["before"]["n_dead_tup"] >= 20_000 and result["after"]["n_dead_tup"] == 0
    assert outcome["summary"]["dead_tuples_removed"] >= 20_000
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT reason, action, status, (before->>'n_dead_tup')::int, (after->>'n_dead_tup')::int "
                           "FROM csl_ops.maintenance_actions WHERE table_name = 'bloated'").fetchone()
    assert row[:3] == ("dead_tuples", "vacuum", "done") and row[3] >= 20_000 and row[4] == 0


def test_a_never_analyzed_table_gets_analyze_only(db_url):
    make_table(db_url, "fresh_rows", 5_000, analyze=False)
    wait_for_stats(db_url, "fresh_rows", "n_live_tup", lambda v: v >= 5_000)
    chosen, _ = plan(db_url)
    assert (chosen["fresh_rows"].reason, chosen["fresh_rows"].action) == ("stale_statistics", "analyze")
    run_all(db_url)
    with psycopg.connect(db_url) as conn:
        last_analyze, last_vacuum = conn.execute(
            "SELECT last_analyze, last_vacuum FROM pg_stat_user_tables WHERE relname = 'fresh_rows'").fetchone()
    assert last_analyze is not None and last_vacuum is None


def test_old_relfrozenxid_is_frozen_first(db_url):
    make_table(db_url, "bloated_too", 5_000)
    make_table(db_url, "ancient", 1_000, options="autovacuum_enabled = false, autovacuum_freeze_table_age = 500")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE bloated_too SET payload = 'z'")
        for _ in range(600):  # burn transaction ids so age(relfrozenxid) passes the table's freeze age
            conn.execute("SELECT txid_current()")
    wait_for_stats(db_url, "bloated_too", "n_dead_tup", lambda v: v >= 5_000)
    chosen, _ = plan(db_url)
    order = [c for c in chosen]
    assert chosen["ancient"].reason == "wraparound" and chosen["ancient"].action == "vacuum_freeze"
    assert order.index("ancient") < order.index("bloated_too")
    outcome = run_all(db_url)
    assert next(r["table"] for r in outcome["results"]) == "ancient"
    ancient = outcome["results"][0]
    assert ancient["status"] == "done" and ancient["after"]["xid_age"] < ancient["before"]["xid_age"]


def test_a_locked_table_is_skipped_without_waiting(db_url):
    make_table(db_url, "busy", 10_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE busy SET payload = 'b'")
    wait_for_stats(db_url, "busy", "n_dead_tup", lambda v: v >= 10_000)
    with psycopg.connect(db_url) as holder:
        holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        outcome = run_all(db_url, policy=Policy(tables=("busy",)), wait_horizon=False)
        elapsed = time.monotonic() - started
        holder.rollback()
    result = outcome["results"][0]
    assert result["status"] == "skipped_locked" and "lock" in result["error"]
    assert elapsed < 10
    assert wait_for_stats(db_url, "busy", "n_dead_tup", lambda v: v >= 10_000)  # untouched


def test_dry_run_changes_nothing_and_a_rerun_finds_nothing(db_url):
    make_table(db_url, "churn", 10_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM churn WHERE id % 2 = 0")
    wait_for_stats(db_url, "churn", "n_dead_tup", lambda v: v >= 5_000)
    dry = run_all(db_url, dry_run=True)
    assert {r["status"] for r in dry["results"]} == {"dry_run"}
    assert wait_for_stats(db_url, "churn", "n_dead_tup", lambda v: v >= 5_000)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM csl_ops.maintenance_actions").fetchone()[0] == 0
    first = run_all(db_url)
    assert any(r["table"] == "churn" and r["status"] == "done" for r in first["results"])
    time.sleep(0.5)
    chosen, _ = plan(db_url, tables=("churn",))
    assert chosen == {}


def test_recent_autovacuum_is_skipped_with_that_reason_unless_autovacuum_is_off_for_it(db_url):
    make_table(db_url, "auto_done", 1_000, options="autovacuum_enabled = true")
    make_table(db_url, "auto_off", 1_000, options="autovacuum_enabled = false")
    with psycopg.connect(db_url) as conn:
        evidence = [e for e in vacuum.gather(conn) if e.table in ("auto_done", "auto_off")]
        server = vacuum.settings(conn)
    from datetime import datetime

    for table in evidence:
        table.n_dead_tup = 900
        table.last_autovacuum = datetime.now(UTC)
    chosen, skipped = vacuum.choose(evidence, server, Policy())
    assert [s["table"] for s in skipped] == ["public.auto_done"] and skipped[0]["would_have_been"] == "dead_tuples"
    assert "autovacuum vacuumed it 0 min ago" in skipped[0]["reason"]
    # autovacuum is off for auto_off (its last run predates that): it will not come back, so we act
    assert [(c.table, c.reason) for c in chosen] == [("auto_off", "dead_tuples")]


def test_bad_requests_are_refused(db_url):
    with pytest.raises(MaintenanceError, match="no such user table: nope"):
        plan(db_url, tables=("nope",))
    for bad in ({"mode": "full"}, {"dead_ratio": 0}, {"dead_ratio": 1.5}, {"max_tables": 0}):
        with pytest.raises(MaintenanceError):
            Policy(**bad)


def test_max_tables_keeps_the_most_urgent(db_url):
    for name in ("t_one", "t_two", "t_three"):
        make_table(db_url, name, 2_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE t_one SET payload = 'a'")
        conn.execute("UPDATE t_two SET payload = 'a' WHERE id <= 1000")
        conn.execute("UPDATE t_three SET payload = 'a' WHERE id <= 500")
    wait_for_stats(db_url, "t_three", "n_dead_tup", lambda v: v >= 500)
    chosen, skipped = plan(db_url, max_tables=1, tables=("t_one", "t_two", "t_three"))
    assert list(chosen) == ["t_one"]
    assert {s["table"] for s in skipped} == {"public.t_two", "public.t_three"}
