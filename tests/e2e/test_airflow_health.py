"""End to end: the real Airflow (api-server, scheduler, dag-processor, triggerer; metadata in
the test stack's PostgreSQL) runs ``csl_platform_health``, triggered through REST API v2."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import ensure_settled
from .conftest import run_dag as _run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_platform_health"


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, DAG)


def run_dag(client, conf=None):
    return _run_dag(client, DAG, conf, timeout=240)


def task_run_row(settings, run_id):
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute("SELECT status, error, outcome FROM csl_ops.task_runs WHERE dag_id = %s AND run_id = %s",
                            (DAG, run_id)).fetchone()


def test_login_is_required(airflow, stack_env):
    import httpx

    base = stack_env["AIRFLOW__API__BASE_URL"]
    assert httpx.get(f"{base}/api/v2/dags").status_code == 401
    bad = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": "wrong"})
    assert bad.status_code == 401


def test_health_dag_succeeds_and_records_its_run(airflow, settings):
    run_id, run, states = run_dag(airflow)
    assert run["state"] == "success", states
    assert states == {"check_database": "success", "check_edge": "success", "check_storage[storage.primary]": "success",
                      "check_storage[storage.fallback]": "success", "summary": "success"}
    summary = airflow.xcom(DAG, run_id, "summary", key="summary")
    assert summary["ok"] is True and summary["down"] == []
    assert summary["database"]["reads"]["target"] == "replica"
    assert {name: zone["ok"] for name, zone in summary["edge"]["zones"].items()} == {
        "audio": True, "images": True, "static": True}  # every configured CDN zone, checked from Airflow
    assert summary["edge"]["zones"]["audio"]["base_url"].endswith("/audio")
    status, error, outcome = task_run_row(settings, run_id)
    assert (status, error) == ("success", None) and outcome["storage"]["fallback"]["ok"] is True


def test_bad_param_is_refused_before_any_run(airflow):
    before = airflow.request("GET", f"/dags/{DAG}/dagRuns").json()["total_entries"]
    response = airflow.trigger(DAG, {"max_replica_lag_s": -5})
    assert response.status_code == 400
    assert "max_replica_lag_s" in response.json()["detail"]
    response = airflow.trigger(DAG, {"tolerate": ["database.everything"]})
    assert response.status_code == 400 and "tolerate" in response.json()["detail"]
    assert airflow.request("GET", f"/dags/{DAG}/dagRuns").json()["total_entries"] == before


def test_replica_down_reads_fail_over_and_the_run_names_it(airflow, settings, service_down):
    service_down("pg-replica")
    run_id, run, states = run_dag(airflow)
    assert run["state"] == "failed"
    assert states["check_database"] == "success", "reads must keep working on the primary"
    assert states["summary"] == "failed"
    summary = airflow.xcom(DAG, run_id, "summary", key="summary")
    assert summary["down"] == ["database.replica"]
    assert summary["database"]["reads"] == {**summary["database"]["reads"], "ok": True, "target": "primary"}
    status, error, _ = task_run_row(settings, run_id)
    assert (status, error) == ("failed", "down: database.replica")

    # an operator may tolerate the replica during a rebuild: the run then succeeds
    run_id, run, _ = run_dag(airflow, {"tolerate": ["database.replica"]})
    assert run["state"] == "success"
    assert airflow.xcom(DAG, run_id, "summary", key="summary")["down"] == ["database.replica"]


def test_storage_endpoint_down_fails_its_own_task(airflow, service_down):
    service_down("s3-fallback")
    run_id, run, states = run_dag(airflow)
    assert run["state"] == "failed"
    assert states["check_storage[storage.fallback]"] == "failed"
    assert states["check_storage[storage.primary]"] == "success"
    summary = airflow.xcom(DAG, run_id, "summary", key="summary")
    assert summary["failing"] == ["storage.fallback"]
