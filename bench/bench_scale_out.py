"""The integrity sweep DAG on three executors, same run: LocalExecutor, Celery with one worker, Celery
with two workers (issue 16, ``bench/results/scale_out.json``).

The 100k-object set of ``bench_storage`` (its database and buckets, uploaded once and reused); the
bench stack's Airflow is pointed at them through its connections (``AIRFLOW_CONN_CSL_*``, this
module's ``BenchAirflow``), so the DAG is run unchanged. Per executor: a warm-up run, then
``ROUNDS`` runs of ``csl_storage_integrity`` with 8 shards (no download sampling); kept: the median
run's wall time (the run's start to its end, as Airflow records them) and, over every task
instance of the measured runs, the scheduler-to-worker latency (``queued_when`` → ``start_date``).
Ratios are against the LocalExecutor measured in the same run. Worker slots: the LocalExecutor
runs ``parallelism`` (8) tasks at once, each Celery worker ``CSL_CELERY_CONCURRENCY`` (4).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import psycopg

from csl.config import Settings, load_env_file
from csl.migrations import migrate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from airflow_client import AirflowClient
from bench_storage import prepare
from devstack import CELERY_WORKERS, Stack

DAG = "csl_storage_integrity"
SHARDS = 8
ROUNDS = 3
SET = ("100k", 100_000)


class BenchAirflow(Stack):
    """The bench stack whose Airflow reads the bench data set: its connections name the set's
    database (primary and replica) and buckets instead of the platform's."""

    def __init__(self, stack: Stack, database: str, bucket: str) -> None:
        super().__init__(stack.state, stack.env_file)
        self.load_config()
        self.database, self.bucket = database, bucket

    def env_values(self) -> dict:
        values = super().env_values()
        for name in ("AIRFLOW_CONN_CSL_DB", "AIRFLOW_CONN_CSL_DB_REPLICA", "DATABASE_URL", "DATABASE_READ_REPLICA_URL"):
            values[name] = values[name].rsplit("/", 1)[0] + f"/{self.database}"
        for name in ("AIRFLOW_CONN_CSL_STORAGE_PRIMARY", "AIRFLOW_CONN_CSL_STORAGE_FALLBACK"):
            conn = json.loads(values[name])
            conn["extra"]["bucket"] = self.bucket
            values[name] = json.dumps(conn)
        values["MINIO_BUCKET"] = values["S3_BUCKET"] = self.bucket
        return values


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def measure_run(client: AirflowClient) -> dict:
    response = client.trigger(DAG, {"shards": SHARDS, "deep_sample": 0})
    if response.status_code != 200:
        raise RuntimeError(f"trigger {DAG}: HTTP {response.status_code} {response.text}")
    run_id = response.json()["dag_run_id"]
    run = client.wait_for_run(DAG, run_id, timeout=1800)
    if run["state"] != "success":
        raise RuntimeError(f"{DAG} {run_id}: {run['state']}")
    tis = client.task_instances(DAG, run_id)
    latency = [(_time(ti["start_date"]) - _time(ti["queued_when"])).total_seconds() for ti in tis]
    summary = client.xcom(DAG, run_id, "report", key="summary")
    hosts: dict[str, int] = {}
    for ti in tis:
        host = (ti["hostname"] or "").split(".", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
    return {"wall_s": round((_time(run["end_date"]) - _time(run["start_date"])).total_seconds(), 2),
            "queued_to_running_s": [round(x, 3) for x in latency], "hosts": hosts,
            "task_run_s": {f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]:
                           round(ti["duration"] or 0.0, 2) for ti in tis},
            "findings": {k: sum(v.values()) for k, v in summary["findings"].items()}, "listed": summary["listed"]}


def executor_runs(stack: BenchAirflow, client: AirflowClient, label: str) -> dict:
    client.wait_for_dag(DAG, timeout=300)
    measure_run(client)  # warm-up: fresh workers import csl, the servers' caches warm
    runs = [measure_run(client) for _ in range(ROUNDS)]
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    latencies = [x for r in runs for x in r["queued_to_running_s"]]
    median = ordered[len(ordered) // 2]
    print(f"[bench] scale_out {label}: {[r['wall_s'] for r in runs]} s", flush=True)
    return {"wall_s": median["wall_s"], "all_wall_s": [r["wall_s"] for r in runs],
            "queued_to_running_s": {"median": round(statistics.median(latencies), 3),
                                    "p90": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 3),
                                    "max": round(max(latencies), 3), "tasks": len(latencies)},
            "hosts": median["hosts"], "task_run_s": median["task_run_s"], "findings": median["findings"],
            "listed": median["listed"]}


def run(stack: Stack, **_: object) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    settings = Settings.from_env(env)
    name, n = SET
    url, primary, _fallback = prepare(stack, settings, name, n)
    with psycopg.connect(url, autocommit=True) as conn:  # the set's database may predate later migrations
        migrate(conn, components=("platform", "csl_ops"))
    bench = BenchAirflow(stack, url.rsplit("/", 1)[1], primary.bucket)
    result: dict = {"objects": n, "shards": SHARDS, "rounds": ROUNDS, "executors": {}}
    client = None
    try:
        for label, executor, workers in (("local", "local", 0), ("celery_2_workers", "celery", 2),
                                         ("celery_1_worker", "celery", 1)):
            bench.use_executor(executor)
            bench.airflow_up()
            if client is None:  # logs in at once: Airflow must be up
                client = AirflowClient(env["AIRFLOW__API__BASE_URL"], "admin", env["CSL_AIRFLOW_ADMIN_PASSWORD"])
            for service in CELERY_WORKERS[workers:]:
                bench.stop(service)
            client.unpause(DAG)
            time.sleep(3)
            result["executors"][label] = executor_runs(bench, client, label)
            client.pause(DAG)
    finally:
        bench.use_executor("local")
        bench.stop_airflow()
        for service in ("redis-exporter", "redis"):
            bench.stop(service)
        if client is not None:
            client.close()
    local = result["executors"]["local"]
    one, two = result["executors"]["celery_1_worker"], result["executors"]["celery_2_workers"]
    same = local["findings"] == one["findings"] == two["findings"] and local["listed"] == one["listed"] == two["listed"]
    result["summary"] = {
        "local_s": local["wall_s"], "celery_1_worker_s": one["wall_s"], "celery_2_workers_s": two["wall_s"],
        "celery_1_vs_local": round(one["wall_s"] / local["wall_s"], 2),
        "celery_2_vs_local": round(two["wall_s"] / local["wall_s"], 2),
        "speed_up_2_vs_1_worker": round(one["wall_s"] / two["wall_s"], 2),
        "queued_to_running_median_s": {k: v["queued_to_running_s"]["median"] for k, v in result["executors"].items()},
        "queued_to_running_p90_s": {k: v["queued_to_running_s"]["p90"] for k, v in result["executors"].items()},
        # the shards' summed run time: the same work, stretched by how many share the 2 cores at once
        "sweep_task_s_total": {k: round(sum(t for name, t in v["task_run_s"].items() if name.startswith("sweep[")), 1)
                               for k, v in result["executors"].items()},
        "cores": os.cpu_count(),
        "same_findings_everywhere": same,
    }
    return result
