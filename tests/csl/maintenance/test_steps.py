"""The steps the DAG's tasks and ``python -m csl indexes|maintenance`` share (``csl.maintenance``):
one plan, one build or action at a time, the run's report, the night's time budget."""

from __future__ import annotations

import time

import psycopg
import pytest

from csl.maintenance import indexes, vacuum
from csl.maintenance.indexes import CatalogError, IndexRunFailed
from csl.maintenance.vacuum import Budget, MaintenanceRunFailed, Policy
from csl.migrations import migrate

from ...conftest import wait_for_cleanup_horizon


def connector(url):
    return lambda: psycopg.connect(url, autocommit=True)


# -- indexes ---------------------------------------------------------------------------------------

def test_the_plan_is_the_whole_catalog_or_only_the_names_given_and_unknown_names_are_refused(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        whole = indexes.plan_indexes(conn)
        only = indexes.plan_indexes(conn, ["idx_users_role_created"])
        with pytest.raises(CatalogError, match="idx_nope"):
            indexes.plan_indexes(conn, ["idx_nope"])
    assert {i.name for i in whole.to_build} == set(whole.summary["to_build"]) == {d.name for d in indexes.load_catalog()}
    assert [i.name for i in only.to_build] == ["idx_users_role_created"]
    assert only.as_dict()["summary"]["counts"]["build"] == 1 and only.as_dict()["plan"][0]["name"]


def test_a_failed_build_is_recorded_before_it_fails_the_task(platform_db):
    with psycopg.connect(platform_db, autocommit=True) as conn:
        item = indexes.plan_indexes(conn, ["idx_users_role_created"]).to_build[0]
    with psycopg.connect(platform_db) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(indexes.IndexBuildError) as failed:
            indexes.build_planned(connector(platform_db), vars(item), run_id="t-steps", lock_timeout_ms=300,
                                  max_lock_retries=0, backoff_s=0.01)
        holder.rollback()
    assert failed.value.result.status == "failed" and failed.value.result.blockers
    with psycopg.connect(platform_db) as conn:
        row = conn.execute("SELECT status, error FROM csl_ops.index_builds WHERE run_id = 't-steps' "
                           "AND index_name = 'idx_users_role_created'").fetchone()
    assert row[0] == "failed" and "lock_timeout" in row[1]


def test_a_build_of_a_name_the_catalog_does_not_declare_is_refused():
    item = {"name": "idx_nope", "table": "users", "action": "build", "reason": "", "statement": None}
    with pytest.raises(CatalogError, match="idx_nope"):
        indexes.build_planned(lambda: pytest.fail("no connection for a refused item"), item, run_id="t")


SUMMARY = {"counts": {"build": 3, "skip": 1}, "to_build": ["a", "b", "c"], "unknown": ["old_idx"],
           "blocked": [{"name": "u", "reason": "duplicates"}]}


def build(name, status="success", **extra):
    return {"name": name, "table": "t", "action": "build", "status": status, "attempts": 1, "duration_ms": 10,
            "size_bytes": 8192, "valid": status == "success", "error": extra.get("error"), "blockers": [],
            "cleaned_up": []}


def test_the_run_report_names_what_failed_and_what_never_ran():
    report = indexes.report_run(SUMMARY, [build("a"), build("b", "failed", error="lock_timeout hit"), None],
                                dry_run=False)
    assert [b["name"] for b in report.built] == ["a"] and [b["name"] for b in report.failed] == ["b"]
    assert report.not_run == ["c"] and report.unknown == ["old_idx"] and report.total_build_ms == 20
    assert not report.ok
    with pytest.raises(IndexRunFailed, match="b: lock_timeout hit; never ran: c"):
        report.raise_for_failures()
    assert report.as_dict()["plan"] == {"build": 3, "skip": 1}


def test_a_dry_run_builds_nothing_and_that_is_not_a_failure():
    report = indexes.report_run(SUMMARY, [], dry_run=True)
    assert report.ok and report.not_run == [] and report.blocked == [{"name": "u", "reason": "duplicates"}]
    report.raise_for_failures()


# -- vacuum ----------------------------------------------------------------------------------------

@pytest.fixture
def bloated(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("csl_ops",))
        conn.execute("CREATE TABLE bloated (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO bloated SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
        conn.execute("VACUUM ANALYZE bloated")
        conn.execute("UPDATE bloated SET payload = payload || 'y'")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(fresh_database) as conn:
            if conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'bloated'").fetchone()[0]:
                break
        time.sleep(0.2)
    wait_for_cleanup_horizon(fresh_database)
    return fresh_database


def test_no_action_starts_once_the_budget_is_spent_and_the_record_says_so(bloated):
    with psycopg.connect(bloated, autocommit=True) as conn:
        plan = vacuum.plan_maintenance(conn, Policy())
    candidate = next(c for c in plan.chosen if c.table == "bloated")
    spent = Budget(started_at=time.time() - 120, max_duration_s=60)
    late = vacuum.carry_out(connector(bloated), candidate, run_id="t-late", budget=spent)
    assert late.status == "skipped_budget" and "max_duration_s=60 spent before it started" in late.error
    with psycopg.connect(bloated) as conn:
        dead = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'bloated'").fetchone()[0]
        recorded = conn.execute("SELECT status FROM csl_ops.maintenance_actions WHERE run_id = 't-late'").fetchone()
    assert dead >= 5000 and recorded == ("skipped_budget",)
    in_time = vacuum.carry_out(connector(bloated), candidate, run_id="t-in-time",
                               budget=Budget(started_at=plan.started_at, max_duration_s=3600))
    assert in_time.status == "done" and in_time.after["n_dead_tup"] == 0


def test_the_command_line_run_keeps_the_same_budget(bloated):
    outcome = vacuum.run(connector(bloated), Policy(), run_id="t-cli-budget", max_duration_s=0)
    assert outcome["results"] and {r["status"] for r in outcome["results"]} == {"skipped_budget"}


def action(table, status="done", dead=(100, 0)):
    return {"schema": "public", "table": table, "reason": "dead_tuples", "action": "vacuum", "status": status,
            "duration_ms": 5, "before": {"n_dead_tup": dead[0], "total_bytes": 100},
            "after": {"n_dead_tup": dead[1], "total_bytes": 80}, "error": None}


PLAN = {"chosen": [{"table": "a"}, {"table": "b"}], "skipped": [{"table": "c", "reason": "autovacuum ran"}],
        "started_at": 0.0}


def test_the_night_report_counts_a_chosen_table_without_an_action_as_failed():
    report = vacuum.report_night(PLAN, [action("a"), None], dry_run=False)
    assert report.never_ran == 1 and report.failed == 1 and report.summary["dead_tuples_removed"] == 100
    with pytest.raises(MaintenanceRunFailed, match="1 maintenance action"):
        report.raise_for_failures()
    assert report.as_dict()["skipped_by_policy"] == PLAN["skipped"] and report.as_dict()["chosen"] == 2


def test_a_dry_run_night_acts_on_nothing_and_does_not_fail():
    report = vacuum.report_night(PLAN, [], dry_run=True)
    assert report.failed == 0 and report.as_dict()["dry_run"] is True
    report.raise_for_failures()
