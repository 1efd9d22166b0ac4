"""End to end: ``csl_revenue_settlement`` in the real Airflow settles the demo data exactly once."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_revenue_settlement"


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, DAG)


def test_settles_then_a_rerun_has_nothing_to_do(airflow, settings):
    with psycopg.connect(settings.database.primary_url) as conn:
        settled_before = conn.execute("SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0]
        completed = conn.execute("SELECT count(*) FROM licenses WHERE payment_status = 'completed'").fetchone()[0]
    run_id, run, states = run_dag(airflow, DAG)
    assert run["state"] == "success", states
    assert states == {"settle": "success", "send_payouts": "skipped", "statement": "success"}
    summary = airflow.xcom(DAG, run_id, "settle")
    assert summary["status"] == "committed" and summary["held"] == 0
    assert settled_before + summary["licences"] == completed
    assert airflow.xcom(DAG, run_id, "settle", key="gate")["success"] is True
    statement = airflow.xcom(DAG, run_id, "statement")
    assert Path(statement["path"]).is_file() and statement["rows"] > 0

    run_id, run, _ = run_dag(airflow, DAG)
    assert run["state"] == "success"
    assert airflow.xcom(DAG, run_id, "settle")["licences"] == 0


def test_bad_params_are_refused_at_trigger(airflow):
    for conf in ({"contributor_share_bps": 12000}, {"minimum_payout_cents": -1}, {"period_start": "last week"}):
        response = airflow.trigger(DAG, conf)
        assert response.status_code == 400 and next(iter(conf)) in response.json()["detail"]
