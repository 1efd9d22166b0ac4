"""The real Airflow, started once for the e2e tests against the session's test stack."""

from __future__ import annotations

import pytest
from airflow_client import AirflowClient


@pytest.fixture(scope="session")
def airflow(stack, platform, stack_env):
    # Airflow starts with the stack's StatsD settings (its monitoring ports, chosen now): the
    # monitoring tests start the bridge later without restarting Airflow; until then the UDP
    # datagrams go nowhere, which costs nothing.
    stack.monitoring_config()
    stack.airflow_up()
    client = AirflowClient(stack_env["AIRFLOW__API__BASE_URL"], "admin", stack_env["CSL_AIRFLOW_ADMIN_PASSWORD"])
    yield client
    client.close()


def settle(client: AirflowClient, dag_id: str, timeout: float = 600) -> None:
    """Unpause, then wait out the scheduled run Airflow creates at once for the latest interval."""
    import time

    client.wait_for_dag(dag_id)
    client.unpause(dag_id)
    time.sleep(2)  # give the scheduler a beat to create the scheduled run
    deadline = time.monotonic() + timeout
    while True:
        runs = client.request("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]}).json()
        if not runs.get("dag_runs"):
            return
        assert time.monotonic() < deadline, f"{dag_id} runs still active: {runs}"
        time.sleep(1)


_settled: set[str] = set()


def ensure_settled(client: AirflowClient, dag_id: str) -> None:
    if dag_id not in _settled:
        settle(client, dag_id)
        _settled.add(dag_id)


def run_dag(client: AirflowClient, dag_id: str, conf: dict | None = None, timeout: float = 300):
    """Trigger, wait, and return (run_id, run, {task[map]: state})."""
    ensure_settled(client, dag_id)
    response = client.trigger(dag_id, conf)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    run = client.wait_for_run(dag_id, run_id, timeout=timeout)
    states = {}
    for ti in client.task_instances(dag_id, run_id):
        name = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['rendered_map_index']}]"
        states[name] = ti["state"]
    return run_id, run, states
