"""Scale-out (issue 16): the same DAGs on the CeleryExecutor, Redis as the broker, two real workers.

The module first runs the integrity sweep (8 mapped shards) and an index install on the session's
Airflow (LocalExecutor), then switches that Airflow to Celery (``devstack`` ``use_executor``: Redis,
two ``airflow celery worker`` processes) and runs them again: the outcome must be the same and
the task instances must show both workers. A worker killed with SIGKILL mid-run loses its tasks to
the other one, and nothing is half-written. Two settlement runs triggered at once post the ledger
once. The dashboard's scale-out panels return series from the live Prometheus. Afterwards the
session's Airflow is switched back to the LocalExecutor (workers and Redis stopped, by pid).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg
import psycopg.sql
import pytest
from devstack import CELERY_WORKERS, pid_alive, process_tree

from csl.maintenance.indexes import load_catalog

from ..monitoring.promql import dashboard_panels, empty_panels, wait_for
from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
SWEEP = "csl_storage_integrity"
INDEXES = "csl_index_install"
SETTLEMENT = "csl_revenue_settlement"
WORKER_NAMES = {"csl-worker-1", "csl-worker-2"}
# two catalog indexes the install rebuilds in both executors' runs
REBUILT = sorted(d.name for d in load_catalog())[:2]


def sweep_outcome(airflow, run_id: str) -> dict:
    summary = airflow.xcom(SWEEP, run_id, "report", key="summary")
    return {k: summary[k] for k in ("findings", "listed", "bytes", "shards_done", "failed")}


def open_findings(settings) -> list[tuple]:
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute("SELECT object_key, kind, provider FROM csl_ops.storage_findings "
                            "WHERE resolved_at IS NULL ORDER BY 1, 2, 3").fetchall()


def drop_rebuilt(settings) -> None:
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        for name in REBUILT:
            conn.execute(psycopg.sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(psycopg.sql.Identifier(name)))


def index_outcome(airflow, settings, run_id: str) -> dict:
    with psycopg.connect(settings.database.primary_url) as conn:
        valid = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY(%s) AND i.indisvalid ORDER BY 1", (REBUILT,)).fetchall()
        builds = conn.execute("SELECT index_name, action, status FROM csl_ops.index_builds WHERE run_id = %s "
                              "ORDER BY 1", (run_id,)).fetchall()
    report = airflow.xcom(INDEXES, run_id, "report", key="report")
    return {"valid": [r[0] for r in valid], "builds": builds, "built": sorted((b["name"], b["action"]) for b in report["built"]),
            "failed": report["failed"]}


def hosts(airflow, dag_id: str, run_id: str) -> dict[str, str]:
    """task[map] -> the worker name its last try ran on (``csl-worker-N``, from the host name)."""
    found = {}
    for ti in airflow.task_instances(dag_id, run_id):
        name = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
        found[name] = (ti["hostname"] or "").split(".", 1)[0]
    return found


@pytest.fixture(scope="module")
def local_outcome(airflow, stack, settings) -> dict:
    """The sweep's and the index install's outcome under the LocalExecutor (the session's Airflow)."""
    stack.use_executor("local")
    stack.airflow_up()
    ensure_settled(airflow, SWEEP)
    ensure_settled(airflow, INDEXES)
    run_id, run, states = run_dag(airflow, SWEEP, {"shards": 8})
    assert run["state"] == "success", states
    sweep = sweep_outcome(airflow, run_id)
    assert set(hosts(airflow, SWEEP, run_id).values()) - {""}, "tasks record a host under LocalExecutor too"
    drop_rebuilt(settings)
    run_id, run, states = run_dag(airflow, INDEXES, {"only": REBUILT}, timeout=600)
    assert run["state"] == "success", states
    return {"sweep": sweep, "findings": open_findings(settings), "indexes": index_outcome(airflow, settings, run_id)}


@pytest.fixture(scope="module")
def celery(airflow, stack, local_outcome):
    """The session's Airflow on the CeleryExecutor for this module; the LocalExecutor again after it."""
    stack.use_executor("celery")
    try:
        stack.airflow_up()
        assert all(stack.pid(w) is not None for w in CELERY_WORKERS) and stack.pid("redis") is not None
        yield stack
    finally:
        stack.use_executor("local")
        stack.airflow_up()
        assert stack.pid("redis") is None and all(stack.pid(w) is None for w in CELERY_WORKERS)


def test_sweep_and_index_install_run_on_both_workers_with_the_local_outcome(airflow, celery, settings, local_outcome):
    run_id, run, states = run_dag(airflow, SWEEP, {"shards": 8})
    assert run["state"] == "success", states
    assert sweep_outcome(airflow, run_id) == local_outcome["sweep"]
    assert open_findings(settings) == local_outcome["findings"]
    ran_on = hosts(airflow, SWEEP, run_id)
    assert set(ran_on.values()) == WORKER_NAMES, ran_on  # 10 tasks, 8 slots: both workers took some

    drop_rebuilt(settings)
    run_id, run, states = run_dag(airflow, INDEXES, {"only": REBUILT}, timeout=600)
    assert run["state"] == "success", states
    assert index_outcome(airflow, settings, run_id) == local_outcome["indexes"]
    assert set(hosts(airflow, INDEXES, run_id).values()) <= WORKER_NAMES


def running_on(airflow, dag_id: str, run_id: str, worker: str) -> list[dict]:
    return [ti for ti in airflow.task_instances(dag_id, run_id)
            if ti["state"] == "running" and (ti["hostname"] or "").startswith(worker + ".")]


def test_a_worker_killed_mid_run_loses_its_tasks_to_the_other(airflow, celery, settings, local_outcome):
    """SIGKILL to one worker and every process under it (``kill_worker``) while its sweep shards
    wait inside their transactions: the scheduler sees their heartbeats stop, fails
    those tries, and the retries run on the surviving worker; the sweep ends as under LocalExecutor."""
    ensure_settled(airflow, SWEEP)
    victim_service, victim = CELERY_WORKERS[0], "csl-worker-1"
    hold = psycopg.connect(settings.database.primary_url)
    try:
        # each shard writes its findings at the end of its one transaction: held here, the shards wait
        # inside their transactions (the plan writes no finding: it is not held up)
        hold.execute("LOCK TABLE csl_ops.storage_findings IN SHARE ROW EXCLUSIVE MODE")
        response = airflow.trigger(SWEEP, {"shards": 8})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        deadline = time.monotonic() + 180
        while not running_on(airflow, SWEEP, run_id, victim) or not waiting_on(settings, "storage_findings"):
            assert time.monotonic() < deadline, airflow.task_instances(SWEEP, run_id)
            time.sleep(1)
        time.sleep(2)  # let the victim's other slots take their shards too
        killed = {(ti["task_id"], ti["map_index"]) for ti in running_on(airflow, SWEEP, run_id, victim)}
        assert killed and {task for task, _ in killed} == {"sweep"}, killed  # shards, not the plan
        kill_worker(celery, victim_service)
    finally:
        hold.rollback()
        hold.close()
    try:
        run = airflow.wait_for_run(SWEEP, run_id, timeout=600)
        tis = {(ti["task_id"], ti["map_index"]): ti for ti in airflow.task_instances(SWEEP, run_id)}
        assert run["state"] == "success", {k: (t["state"], t["hostname"]) for k, t in tis.items()}
        assert killed and all(tis[k]["try_number"] == 2 for k in killed), killed
        assert all(tis[k]["hostname"].startswith("csl-worker-2.") for k in killed)
        assert sweep_outcome(airflow, run_id) == local_outcome["sweep"]
        assert open_findings(settings) == local_outcome["findings"]  # none lost, none twice
        with psycopg.connect(settings.database.primary_url) as conn:
            shards = conn.execute(
                "SELECT sh.shard, sh.status FROM csl_ops.storage_sweep_shards sh JOIN csl_ops.storage_sweeps s "
                "ON s.id = sh.sweep_id WHERE s.run_key = %s ORDER BY 1", (run_id,)).fetchall()
        assert shards == [(n, "done") for n in range(8)]
    finally:
        celery.start(victim_service)
    assert celery.pid(victim_service) is not None


def test_an_index_build_whose_worker_dies_is_retried_on_the_other(airflow, celery, settings):
    """The build's worker dies while its CREATE INDEX CONCURRENTLY waits for the table: the try fails
    by heartbeat, the retry runs on the other worker and finds what the dead try left (nothing, an
    INVALID index, or a finished one): the index ends valid, one build row, no INVALID leftover."""
    ensure_settled(airflow, INDEXES)
    name, table = REBUILT[0], next(d.table for d in load_catalog() if d.name == REBUILT[0])
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(psycopg.sql.Identifier(name)))
    # SHARE UPDATE EXCLUSIVE: what CREATE INDEX CONCURRENTLY takes, so the build waits for the test
    run_id, killed = kill_while_waiting(airflow, celery, settings, INDEXES, "build",
                                        {"only": [name], "lock_timeout_ms": 600_000},
                                        table=("public", table), mode="SHARE UPDATE EXCLUSIVE")
    try:
        run = airflow.wait_for_run(INDEXES, run_id, timeout=600)
        build = next(t for t in airflow.task_instances(INDEXES, run_id) if t["task_id"] == "build")
        assert run["state"] == "success", airflow.task_instances(INDEXES, run_id)
        assert build["try_number"] == 2 and not build["hostname"].startswith(f"csl-worker-{killed[-1]}.")
        with psycopg.connect(settings.database.primary_url) as conn:
            valid = conn.execute("SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c "
                                 "ON c.oid = i.indexrelid WHERE c.relname = %s", (name,)).fetchall()
            invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT (indisvalid AND indisready)").fetchone()[0]
            rows = conn.execute("SELECT status FROM csl_ops.index_builds WHERE run_id = %s AND index_name = %s",
                                (run_id, name)).fetchall()
        assert valid == [(True,)] and invalid == 0 and rows == [("success",)]
    finally:
        celery.start(killed)


def test_two_settlement_runs_at_once_post_the_ledger_once(airflow, celery, settings):
    ensure_settled(airflow, SETTLEMENT)
    count = ("SELECT (SELECT count(*) FROM csl_ops.settled_licences), "
             "(SELECT count(*) FROM licenses WHERE payment_status = 'completed')")
    add_due_licences(settings, 3)
    with psycopg.connect(settings.database.primary_url) as conn:
        settled_before, completed = conn.execute(count).fetchone()
    assert completed - settled_before >= 3
    runs = []
    for _ in range(2):
        response = airflow.trigger(SETTLEMENT, {})
        assert response.status_code == 200, response.text
        runs.append(response.json()["dag_run_id"])
    finished = [airflow.wait_for_run(SETTLEMENT, run_id, timeout=600) for run_id in runs]
    assert [r["state"] for r in finished] == ["success", "success"]
    settle = {run_id: next(ti for ti in airflow.task_instances(SETTLEMENT, run_id) if ti["task_id"] == "settle")
              for run_id in runs}
    first, second = sorted(settle, key=lambda run_id: settle[run_id]["start_date"])
    assert settle[first]["end_date"] <= settle[second]["start_date"], "the runs never overlap, on any worker"
    assert {ti["hostname"].split(".", 1)[0] for ti in settle.values()} <= WORKER_NAMES
    assert airflow.xcom(SETTLEMENT, first, "settle")["licences"] == completed - settled_before
    assert airflow.xcom(SETTLEMENT, second, "settle")["licences"] == 0
    with psycopg.connect(settings.database.primary_url) as conn:
        assert conn.execute(count).fetchone() == (completed, completed)
        unbalanced = conn.execute("SELECT currency, sum(p.amount_minor) FROM csl_ops.postings p JOIN "
                                  "csl_ops.ledger_accounts a ON a.id = p.account_id GROUP BY 1 "
                                  "HAVING sum(p.amount_minor) <> 0").fetchall()
    assert unbalanced == []


def add_due_licences(settings, n: int) -> None:
    """``n`` new sales, each paid by its own intent: due at the next settlement run."""
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        for _ in range(n):
            pi = f"pi_celery_{uuid.uuid4().hex[:16]}"
            conn.execute("INSERT INTO payment_intents (id, user_id, amount, currency, status) "
                         "SELECT %s, user_id, 12.34, 'usd', 'succeeded' FROM licenses LIMIT 1", (pi,))
            conn.execute("INSERT INTO licenses (user_id, audio_sample_id, license_type, price, payment_status, "
                         "payment_intent_id) SELECT user_id, audio_sample_id, license_type, 12.34, 'completed', %s "
                         "FROM licenses WHERE audio_sample_id IS NOT NULL LIMIT 1", (pi,))


def kill_worker(stack, service: str) -> None:
    """A worker's machine lost: SIGKILL to the worker and every process under it, its task
    processes included (Airflow's supervisor gives each a process group of its own)."""
    tree = process_tree([stack.pid(service)])
    for pid in tree:  # the Celery master first: it would fork new pool processes
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while [pid for pid in tree if pid_alive(pid)]:
        assert time.monotonic() < deadline, f"{service}: processes survived SIGKILL"
        time.sleep(0.2)


def kill_while_waiting(airflow, stack, settings, dag_id: str, task_id: str, conf: dict, *,
                       table: tuple[str, str], mode: str) -> tuple[str, str]:
    """Trigger ``dag_id`` while the test holds ``table`` in lock ``mode``; once a session waits for
    it, kill the worker running ``task_id``; then release the table. Returns (run id, killed service)."""
    hold = psycopg.connect(settings.database.primary_url)
    try:
        hold.execute(psycopg.sql.SQL("LOCK TABLE {} IN " + mode + " MODE").format(psycopg.sql.Identifier(*table)))
        response = airflow.trigger(dag_id, conf)
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        deadline = time.monotonic() + 180
        while not waiting_on(settings, table[1]):
            assert time.monotonic() < deadline, airflow.task_instances(dag_id, run_id)
            time.sleep(0.5)
        return run_id, kill_worker_of(airflow, stack, dag_id, run_id, task_id)
    finally:
        hold.rollback()
        hold.close()


def kill_worker_of(airflow, stack, dag_id: str, run_id: str, task_id: str) -> str:
    """Kill the worker running ``task_id`` (``kill_worker``); returns that worker's service."""
    ti = next(t for t in airflow.task_instances(dag_id, run_id) if t["task_id"] == task_id)
    worker = ti["hostname"].split(".", 1)[0]
    service = CELERY_WORKERS[int(worker.rsplit("-", 1)[1]) - 1]
    kill_worker(stack, service)
    return service


def test_a_settlement_killed_mid_transaction_posts_nothing_and_its_rerun_posts_once(airflow, celery, settings):
    """The settle task's worker dies while the run's transaction waits to write the ledger: nothing
    is posted, the lock is released, and the task cleared (as a person would) runs on the other
    worker and settles each due licence once."""
    ensure_settled(airflow, SETTLEMENT)
    add_due_licences(settings, 2)
    count = ("SELECT (SELECT count(*) FROM csl_ops.settled_licences), "
             "(SELECT count(*) FROM licenses WHERE payment_status = 'completed'), "
             "(SELECT count(*) FROM csl_ops.postings)")
    with psycopg.connect(settings.database.primary_url) as conn:
        settled_before, completed, postings_before = conn.execute(count).fetchone()
    # the run's transaction waits to write the ledger (settled_licences) for the test's lock
    run_id, killed = kill_while_waiting(airflow, celery, settings, SETTLEMENT, "settle", {},
                                        table=("csl_ops", "settled_licences"), mode="SHARE ROW EXCLUSIVE")
    try:
        deadline = time.monotonic() + 240  # the heartbeat timeout (60 s), then the scheduler's check
        while (state := next(t for t in airflow.task_instances(SETTLEMENT, run_id)
                             if t["task_id"] == "settle")["state"]) not in ("up_for_retry", "failed"):
            assert time.monotonic() < deadline, f"settle still {state} after its worker died"
            time.sleep(2)
        with psycopg.connect(settings.database.primary_url) as conn:
            assert conn.execute(count).fetchone() == (settled_before, completed, postings_before), \
                "the dead try's transaction was rolled back: nothing posted"
            assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0] == 0
        cleared = airflow.request("POST", f"/dags/{SETTLEMENT}/clearTaskInstances",
                                  json={"dry_run": False, "dag_run_id": run_id, "task_ids": ["settle"],
                                        "only_failed": False, "reset_dag_runs": True})
        assert cleared.status_code == 200, cleared.text
        run = airflow.wait_for_run(SETTLEMENT, run_id, timeout=600)
        settle = next(t for t in airflow.task_instances(SETTLEMENT, run_id) if t["task_id"] == "settle")
        assert run["state"] == "success" and settle["try_number"] >= 2
        assert not settle["hostname"].startswith(f"csl-worker-{killed[-1]}.")
        assert airflow.xcom(SETTLEMENT, run_id, "settle")["licences"] == completed - settled_before
        with psycopg.connect(settings.database.primary_url) as conn:
            settled_after, _, _ = conn.execute(count).fetchone()
            keys = conn.execute("SELECT count(*) FROM csl_ops.settlement_runs WHERE run_key = %s",
                                (f"{SETTLEMENT}/{run_id}",)).fetchone()[0]
        assert settled_after == completed and keys == 1
    finally:
        celery.start(killed)


def waiting_on(settings, table: str) -> int:
    """Sessions waiting for a lock on ``table`` (csl_ops)."""
    with psycopg.connect(settings.database.primary_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = %s AND NOT l.granted", (table,)).fetchone()[0]


def test_the_scale_out_panels_each_return_a_series(airflow, celery, monitoring):
    """The dashboard's scale-out section (Redis exporter, the CeleryExecutor's StatsD gauges) on
    the live Prometheus, with the Redis job rendered into its configuration under Celery."""
    prometheus = monitoring.monitoring_urls()["prometheus"]
    wait_for(prometheus, 'up{job="redis"} == 1', timeout=60, what="the Redis exporter scraped")
    _run_id, run, states = run_dag(airflow, SWEEP, {"shards": 2})  # the executor's gauges move
    assert run["state"] == "success", states
    panels = dashboard_panels("Scale-out (Celery)")
    assert len(panels) == 6
    assert empty_panels(prometheus, panels) == []
    clients = wait_for(prometheus, "redis_connected_clients")
    assert float(clients[0]["value"][1]) >= 3  # the scheduler and both workers at least
    # task metrics come from the task's own process, on the workers (StatsD settings reach them)
    wait_for(prometheus, f'airflow_ti_finish{{dag_id="{SWEEP}", task_id="sweep", state="success"}} > 0',
             timeout=60, what="ti.finish sent from the workers' task processes")
    wait_for(prometheus, f'airflow_task_duration{{dag_id="{SWEEP}", task_id="sweep"}}', timeout=60,
             what="the shards' durations from the workers")


def test_the_broker_is_private_to_this_stack(celery):
    """Redis on 127.0.0.1 only, refusing a client without the password; the password on no command
    line and in no log of the Celery processes (only in their environment and a 0600 file)."""
    import socket
    from pathlib import Path

    from ..monitoring.test_monitoring import listening

    assert listening(celery.ports["redis"]) == {"0100007F"}
    with socket.create_connection(("127.0.0.1", celery.ports["redis"]), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        assert sock.recv(256).startswith(b"-NOAUTH")
    assert celery.redis_ping() == b"+PONG"
    password = celery.secrets["redis"]
    for service in ("redis", *CELERY_WORKERS):
        pid = celery.pid(service)
        assert pid is not None and os.getpgid(pid) == pid, f"{service} leads its own process group"
        assert password not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"), service
        log_file = celery.logs / f"{service}.log"
        assert password not in log_file.read_text(errors="replace") and log_file.stat().st_mode & 0o077 == 0
    conf = celery.state / "redis" / "redis.conf"
    assert conf.stat().st_mode & 0o077 == 0 and f"requirepass {password}" in conf.read_text()
