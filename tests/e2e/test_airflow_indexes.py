"""End to end: ``csl_index_install`` in the real Airflow, against the test stack's database."""

from __future__ import annotations

import psycopg
import psycopg.sql
import pytest

from csl.maintenance.indexes import load_catalog

from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_index_install"
CATALOG = sorted(d.name for d in load_catalog())  # 24: the 23 of the platform + one split per licence × contributor


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, DAG)


def index_names(settings):
    with psycopg.connect(settings.database.primary_url) as conn:
        return {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE indexname = ANY(%s)", (CATALOG,))}


def builds(settings):
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute("SELECT count(*) FROM csl_ops.index_builds").fetchone()[0]


def test_unknown_name_fails_the_plan_before_any_ddl(airflow, settings):
    before = (index_names(settings), builds(settings))
    _run_id, run, states = run_dag(airflow, DAG, {"only": ["idx_does_not_exist"]})
    assert run["state"] == "failed"
    assert states["plan"] == "failed" and states["build"] in ("upstream_failed", "skipped")
    assert (index_names(settings), builds(settings)) == before
    # the report (all_done) gets the plan's summary as an XComArg: missing, it says which task to look at
    assert states["report"] == "failed"
    log = airflow.request("GET", f"/dags/{DAG}/dagRuns/{_run_id}/taskInstances/report/logs/1",
                          headers={"Accept": "application/json"}).text
    assert "no 'summary' result from task 'plan': it failed or did not run" in log


def test_bad_params_are_refused_at_trigger(airflow):
    for conf in ({"lock_timeout_ms": 0}, {"only": ["Robert'); DROP TABLE users;--"]}, {"dry_run": "yes"}):
        response = airflow.trigger(DAG, conf)
        assert response.status_code == 400, conf
        assert next(iter(conf)) in response.json()["detail"]


def test_dry_run_plans_and_builds_nothing(airflow, settings):
    before = index_names(settings)
    run_id, run, states = run_dag(airflow, DAG, {"dry_run": True})
    assert run["state"] == "success" and states["build"] == "skipped"
    plan = airflow.xcom(DAG, run_id, "plan", key="plan")
    assert len([p for p in plan if p["action"] == "build"]) == len(CATALOG) - len(before & {p["name"] for p in plan})
    assert index_names(settings) == before


def test_full_run_builds_the_whole_catalog_then_a_rerun_does_nothing(airflow, settings):
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        for name in index_names(settings):
            conn.execute(psycopg.sql.SQL("DROP INDEX CONCURRENTLY {}").format(psycopg.sql.Identifier(name)))
    run_id, run, states = run_dag(airflow, DAG, timeout=600)
    assert run["state"] == "success", states
    report = airflow.xcom(DAG, run_id, "report", key="report")
    assert report["failed"] == [] and report["not_run"] == [] and len(report["built"]) == len(CATALOG)
    assert len(index_names(settings)) == len(CATALOG)
    assert len([s for s in states if s.startswith("build[")]) == len(CATALOG)
    with psycopg.connect(settings.database.primary_url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM csl_ops.index_builds WHERE run_id = %s GROUP BY 1",
                            (run_id,)).fetchall()
    assert rows == [("success", len(report["built"]))]

    run_id, run, states = run_dag(airflow, DAG)
    assert run["state"] == "success" and states["build"] == "skipped"
    assert airflow.xcom(DAG, run_id, "report", key="report")["plan"].get("skip") == len(CATALOG)
