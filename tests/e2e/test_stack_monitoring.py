"""End to end, Airflow's own metrics (issue 16): StatsD from the scheduler, the dag-processor, the
triggerer and the tasks' own processes reaches Prometheus through collectd (the StatsD bridge),
relabelled into the Helm chart's names. After a successful and a failed run of
``csl_platform_health`` every panel of the dashboard's Airflow section returns a series from the
live Prometheus, with the DAG's and its tasks' labels, and the CslDagRunFailed alert fires.

The monitoring fixture comes before ``airflow``: on a session whose Airflow already runs without
StatsD, devstack restarts it with the metrics settings.
"""

from __future__ import annotations

import time

import httpx
import pytest

from ..monitoring.promql import dashboard_panels, empty_panels, query, wait_for
from .conftest import run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_platform_health"


@pytest.fixture(scope="module")
def prometheus(monitoring, airflow, stack) -> str:
    """The live Prometheus after one successful and one failed run (the replica down: the run's
    summary fails it; csl_platform_health does not retry)."""
    url = monitoring.monitoring_urls()["prometheus"]
    _, run, _ = run_dag(airflow, DAG)
    assert run["state"] == "success"
    stack.stop("pg-replica")
    try:
        _, run, states = run_dag(airflow, DAG)
    finally:
        stack.start("pg-replica")
    assert run["state"] == "failed" and states["summary"] == "failed"
    # collectd hands a timer on once per interval, Prometheus scrapes it the next few seconds
    wait_for(url, f'max_over_time(airflow_dagrun_failed{{dag_id="{DAG}"}}[10m]) >= 0', timeout=60,
             what="the failed run's timer")
    wait_for(url, f'airflow_ti_finish{{dag_id="{DAG}", task_id="summary", state="failed"}}', timeout=30)
    return url


def test_every_airflow_panel_returns_a_series(prometheus):
    panels = dashboard_panels("Airflow")
    assert len(panels) >= 9
    assert empty_panels(prometheus, panels) == []


def test_task_and_run_metrics_carry_the_dag_and_task_ids(prometheus):
    durations = {(r["metric"]["dag_id"], r["metric"]["task_id"]): float(r["value"][1]) for r in query(
        prometheus, f'max by (dag_id, task_id) (max_over_time(airflow_task_duration{{dag_id="{DAG}"}}[30m]))')}
    assert {"check_database", "check_storage", "check_edge", "summary"} <= {task for _, task in durations}
    assert all(0 < seconds < 600 for seconds in durations.values()), durations  # seconds, as Airflow 3.3 sends them
    runs = query(prometheus, f'max_over_time(airflow_dagrun_duration{{dag_id="{DAG}"}}[30m])')
    assert len(runs) == 1 and 0 < float(runs[0]["value"][1]) < 600
    states = {r["metric"]["state"] for r in query(prometheus, f'airflow_ti_finish{{dag_id="{DAG}"}}')}
    assert {"success", "failed"} <= states
    # one failed run, one failed finish of its summary: each finish is counted once
    failed = query(prometheus, f'airflow_ti_finish{{dag_id="{DAG}", task_id="summary", state="failed"}}')
    assert [float(r["value"][1]) for r in failed] == [1.0]
    pools = {r["metric"]["pool"] for r in query(prometheus, "airflow_pool_open_slots")}
    assert {"default_pool", "csl_ddl", "csl_maintenance"} <= pools
    assert query(prometheus, 'airflow_executor_open_slots{executor="LocalExecutor"}')
    # what is not mapped keeps its StatsD name: nothing of ours is lost, nothing is mislabelled
    assert not query(prometheus, '{__name__=~"airflow_.+", statsd!=""}')


def test_the_failed_run_fires_its_alert(prometheus):
    deadline = time.monotonic() + 60
    while True:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        firing = {(a["labels"]["alertname"], a["labels"].get("dag_id")) for a in alerts if a["state"] == "firing"}
        if ("CslDagRunFailed", DAG) in firing:
            break
        assert time.monotonic() < deadline, f"CslDagRunFailed not firing for {DAG}: {alerts}"
        time.sleep(2)
