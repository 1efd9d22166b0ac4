"""End to end: ``csl_db_maintenance`` in the real Airflow chooses a bloated table and vacuums it."""

from __future__ import annotations

import psycopg
import pytest

from ..conftest import wait_for_cleanup_horizon
from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_db_maintenance"


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, DAG)


@pytest.fixture
def bloated(settings):
    url = settings.database.primary_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.e2e_bloat")
        conn.execute("CREATE TABLE public.e2e_bloat (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO public.e2e_bloat SELECT g, 'a' FROM generate_series(1, 20000) g")
        conn.execute("VACUUM ANALYZE public.e2e_bloat")
        conn.execute("UPDATE public.e2e_bloat SET v = 'b'")
    wait_for_cleanup_horizon(url)
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.e2e_bloat")


def test_dry_run_then_real_run_removes_the_dead_tuples(airflow, bloated):
    run_id, run, states = run_dag(airflow, DAG, {"dry_run": True, "tables": ["e2e_bloat"]})
    assert run["state"] == "success" and states["act"] == "skipped"
    plan = airflow.xcom(DAG, run_id, "plan", key="plan")
    assert [(c["table"], c["reason"]) for c in plan["chosen"]] == [("e2e_bloat", "dead_tuples")]

    run_id, run, states = run_dag(airflow, DAG, {"tables": ["e2e_bloat"]})
    assert run["state"] == "success", states
    assert states["act[public.e2e_bloat]"] == "success"
    report = airflow.xcom(DAG, run_id, "report", key="report")
    assert report["by_status"] == {"done": 1} and report["dead_tuples_removed"] >= 20000
    with psycopg.connect(bloated) as conn:
        row = conn.execute("SELECT status, (after->>'n_dead_tup')::int FROM csl_ops.maintenance_actions "
                           "WHERE run_id = %s AND table_name = 'e2e_bloat'", (run_id,)).fetchone()
    assert row == ("done", 0)


def test_unknown_table_fails_the_plan(airflow):
    _run_id, run, states = run_dag(airflow, DAG, {"tables": ["no_such_table"]})
    assert run["state"] == "failed" and states["plan"] == "failed"
