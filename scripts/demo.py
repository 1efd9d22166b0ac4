#!/usr/bin/env python3
"""The end of ``make demo``: trigger the pipelines through Airflow's REST API, wait, and
print where to look with a one-screen summary of each run."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "include"))

from airflow_client import AirflowClient

from csl.config import load_env_file
from csl.health import format_health

# The nightly chain, in order; each DAG joins the demo once it exists.
# (DAG, conf): replication repairs what the sweep found, and a second sweep shows it closed
DEMO_DAGS = [("csl_platform_health", None), ("csl_index_install", None), ("csl_db_maintenance", None),
             ("csl_revenue_settlement", None), ("csl_storage_integrity", None),
             ("csl_storage_replication", {"mode": "findings"}), ("csl_storage_integrity", None),
             ("csl_storage_publication", None), ("csl_cdn_purge", None), ("csl_performance_report", None)]


def format_index_report(report: dict | None) -> str:
    if not report:
        return "  (no report)"
    built = ", ".join(f"{b['name']} ({b['duration_ms']} ms)" for b in report["built"][:4])
    more = f" and {len(report['built']) - 4} more" if len(report["built"]) > 4 else ""
    lines = [f"  plan {report['plan']}; built {len(report['built'])} in {report['total_build_ms']} ms"
             + (f": {built}{more}" if built else " (everything already as declared)")]
    for failure in report["failed"]:
        lines.append(f"  FAILED {failure['name']}: {failure['error']}")
    lines.append(f"  {len(report['unknown'])} undeclared index(es) reported, left alone")
    return "\n".join(lines)


def format_maintenance_report(report: dict | None) -> str:
    if not report:
        return "  (no report)"
    lines = [(f"  {report['chosen']} table(s) chosen by evidence: {report['by_status'] or 'nothing to do'}; "
             f"{report['dead_tuples_removed']:,} dead tuples removed")]
    lines += [f"  - {t}" for t in report["tables"][:6]]
    if len(report["tables"]) > 6:
        lines.append(f"  … and {len(report['tables']) - 6} more")
    return "\n".join(lines)


def format_settlement(summary: dict | None, statement: dict | None) -> str:
    if not summary:
        return "  (no summary: see the settle task's log)"
    from csl.money import from_minor

    clawbacks = summary["clawbacks"]
    lines = [(f"  {summary['status']}: {summary['licences']:,} licences settled, {summary['splits_reused']:,} platform "
             f"splits reused ({summary.get('splits_paid_before', 0):,} already paid by the platform: recorded, not paid "
             f"again), {clawbacks['refunds']} refunds and {clawbacks.get('disputes', 0)} lost disputes clawed back, "
             f"{summary['payouts']} payout instructions")]
    for currency, figures in sorted((summary.get("by_currency") or {}).items()):
        major = {k: f"{from_minor(figures[k], currency):,}" for k in ("gross_minor", "contributors_minor", "platform_minor")}
        lines.append(f"  {currency}: gross {major['gross_minor']}, contributors {major['contributors_minor']}, "
                     f"platform {major['platform_minor']}")
    holds = summary.get("payout_holds") or {}
    if holds:
        lines.append("  held, balance carried: " + ", ".join(f"{n} {reason.replace('_', ' ')}"
                                                            for reason, n in sorted(holds.items())))
    if statement:
        lines.append(f"  statement CSV: {statement['path']} ({statement['rows']:,} postings)")
    return "\n".join(lines)


def format_sweep(summary: dict | None) -> str:
    if not summary:
        return "  (no summary: see the report task's log)"
    listed = ", ".join(f"{p} {n:,} objects / {summary['bytes'].get(p, 0) / 1e6:.1f} MB"
                       for p, n in summary["listed"].items())
    lines = [(f"  {summary['cells']} key-prefix cells in {summary['shards']} shards; {summary['db_refs']:,} database "
             f"references vs {listed}; {summary['deep_verified']} objects downloaded and hashed")]
    for kind, per in sorted(summary["findings"].items()):
        lines.append(f"  {kind:<18} " + ", ".join(f"{p}: {n}" for p, n in sorted(per.items())))
    if not summary["findings"]:
        lines.append("  no findings: the database and every provider agree")
    lines.append(f"  new {summary['new']}, closed {summary['closed']}; open now {summary['open_findings']} "
                 "(csl_ops.storage_findings)")
    return "\n".join(lines)


def format_replication(summary: dict | None, plan: dict | None) -> str:
    if not summary:
        return "  (no summary: see the report task's log)"
    methods = ", ".join(f"{n} by {m}" for m, n in sorted(summary["by_method"].items())) or "none"
    proofs = ", ".join(f"{n} by {v}" for v, n in sorted(summary["by_verification"].items())) or "none"
    lines = [(f"  mode {summary['mode']}: {summary['verified']} objects copied and verified ({summary['bytes']:,} bytes; "
             f"{methods}; proven {proofs}), {summary['skipped']} already right, {summary['failed']} failed")]
    if plan and plan.get("by_reason"):
        lines.append("  why: " + ", ".join(f"{reason} {n}" for reason, n in sorted(plan["by_reason"].items())))
    lines.append(f"  conflicts left for a person: {summary['conflicts']}"
                 + (f" ({', '.join(summary['conflict_keys'][:3])}{' …' if summary['conflicts'] > 3 else ''}; "
                    "csl_ops.storage_findings kind replication_conflict)" if summary["conflicts"] else ""))
    lines.append(f"  database inventory read from the {summary['inventory_from']}; every copy: "
                 f"csl_ops.replication_copies run {summary['run_id']}")
    return "\n".join(lines)


def format_publication(outcome: dict | None, edge_url: str) -> str:
    if not outcome:
        return "  (no summary: see the publish task's log)"
    lines = []
    for p in outcome["providers"]:
        lines.append(f"  {p['provider']} → bucket {p['bucket']} (public read; the bucket of record is private): "
                     f"{p['approved']} approved samples; {p['published']} were published, copied {p['copied']} "
                     f"(each checked by SHA-256), withdrew {p['withdraw']}")
        if p["corrupt"] or p["missing"]:
            lines.append(f"  not published: {p['corrupt']} whose bytes do not match their SHA-256, "
                         f"{p['missing']} whose original is missing (the sweep's findings)")
        purge = p["purge"]
        lines.append(f"  edge purges sent {purge.get('sent', 0)}, owed {purge.get('owed', 0)}; "
                     f"listen: {edge_url}/audio/<key of an approved sample>")
    return "\n".join(lines)


def format_purge(summary: dict | None, plan: dict | None) -> str:
    if not summary:
        if plan is not None:
            return (f"  nothing owed: {plan['queue_rows']} queue rows, {len(plan['batches'])} batches"
                    + (" (dry run)" if plan.get("dry_run") else "") + "; send, completion and report skipped")
        return "  (no summary: see the task logs)"
    lines = []
    for target, c in sorted(summary["by_target"].items()):
        lines.append(f"  {target}: {c.get('items', 0)} item(s) in {c.get('batches', 0)} batch(es): "
                     f"{c.get('done', 0)} done, {c.get('pending', 0)} pending, {c.get('failed', 0)} failed, "
                     f"{c.get('purged', 0)} cached object(s) dropped")
    lines += [f"  FAILED {f}" for f in summary["failures"][:5]]
    lines.append("  every batch: csl_ops.cdn_purges; what is owed: csl_ops.cdn_purge_queue")
    return "\n".join(lines)


class EdgeDemo:
    """Around the purge DAG's run: an object served by the edge (MISS, then HIT), its bytes replaced
    (the edge still serves the old ones), a purge owed as replication owes one; after the run the
    next fetch is a MISS with the new bytes. The object is deleted afterwards (a purge owed again,
    drained by the DAG's next scheduled run)."""

    def __init__(self) -> None:
        import uuid

        from csl.cdn import CachePolicy, Cdn
        from csl.config import Settings
        from csl.storage import StorageProvider

        self.settings = Settings.from_env()
        self.published = StorageProvider(self.settings.provider("primary")).published()
        self.key = f"samples/demo-edge/{uuid.uuid4().hex[:8]}.wav"
        with Cdn.from_settings(self.settings) as cdn:
            self.url = cdn.url("audio", self.key)
        self.headers = CachePolicy().for_content_type("audio/wav")

    def _put(self, body: bytes) -> None:
        self.published.put(self.key, body, content_type="audio/wav", metadata=self.headers.metadata,
                           cache_control=self.headers.cache_control)

    def _fetch(self) -> str:
        import httpx

        answer = httpx.get(self.url, timeout=10)
        return f"{answer.headers.get('x-cache', '?')} {answer.content[:24]!r} (Cache-Control: " \
               f"{answer.headers.get('cache-control')})"

    def _owe(self, reason: str) -> None:
        import psycopg

        from csl.cdn.queue import edge_tags, enqueue_purge

        with psycopg.connect(self.settings.database.primary_url, autocommit=True) as conn:
            enqueue_purge(conn, provider="primary", key=self.key, url=self.url,
                          tags=edge_tags(self.published.bucket, self.key), reason=reason, source_run="demo")

    def before(self) -> None:
        self._put(b"RIFF demo: the old bytes")
        print(f"edge demo: {self.url}")
        print(f"  fetch 1: {self._fetch()}")
        print(f"  fetch 2: {self._fetch()}")
        self._put(b"RIFF demo: the NEW bytes")
        print(f"  bytes replaced in the published bucket; fetch 3: {self._fetch()}")
        self._owe("replaced")
        print("  a purge owed in csl_ops.cdn_purge_queue (as replication owes one); the purge DAG drains it")

    def after(self) -> None:
        print(f"edge demo after the purge: fetch 4: {self._fetch()}")
        self.published.delete(self.key)
        self._owe("deleted")


def format_report(outcome: dict | None, base_url: str, run_id: str) -> str:
    if not outcome:
        return "  (no report this run: a scheduled run reports only at its report hour; see the snapshot)"
    from urllib.parse import quote

    lines = [f"  {key.replace('_', ' ')}: {value}" for key, value in outcome["summary"].items()]
    lines += [f"  note: {note}" for note in outcome["notes"]]
    lines.append(f"  HTML ({outcome['html_bytes'] / 1000:.0f} kB, built in {outcome['duration_s']} s): {outcome['path']}")
    lines.append(f"  in the Airflow UI: {base_url}/csl-reports/runs/csl_performance_report/{quote(run_id, safe='')}"
                 " (Browse → Performance reports)")
    return "\n".join(lines)


WORKERS: dict[str, int] = {}  # task instances per host they ran on, over the demo


def show(client: AirflowClient, dag_id: str, run: dict) -> int:
    """Print one run's outcome; returns 1 if it failed."""
    run_id = run["dag_run_id"]
    states: dict[str, list[str]] = {}
    for ti in client.task_instances(dag_id, run_id):
        states.setdefault(ti["task_id"], []).append(ti["state"] or "none")
        if ti["hostname"]:  # csl-worker-N.<fqdn> under Celery (devstack's hostname_callable)
            WORKERS[ti["hostname"].split(".", 1)[0]] = WORKERS.get(ti["hostname"].split(".", 1)[0], 0) + 1
    shown = []
    for task_id, task_states in sorted(states.items()):
        if len(task_states) == 1:
            shown.append(f"{task_id}={task_states[0]}")
        else:  # a mapped task: count its instances by state
            counts = {state: task_states.count(state) for state in sorted(set(task_states))}
            shown.append(f"{task_id}[{len(task_states)} mapped]=" + "/".join(f"{n} {st}" for st, n in counts.items()))
    print(f"{dag_id} {run['run_type']} run: {run['state'].upper()}  " + ", ".join(shown))
    def xcom(task_id: str, key: str = "return_value"):
        try:
            return client.xcom(dag_id, run_id, task_id, key=key)
        except RuntimeError:  # the task failed or never ran: its log says why
            return None

    if dag_id == "csl_platform_health":
        summary = xcom("summary", "summary")
        print(format_health(summary) if summary else "  (no summary: see the task logs)")
    elif dag_id == "csl_index_install":
        print(format_index_report(xcom("report", "report")))
    elif dag_id == "csl_revenue_settlement":
        print(format_settlement(xcom("settle"), xcom("statement")))
    elif dag_id == "csl_db_maintenance":
        print(format_maintenance_report(xcom("report", "report")))
    elif dag_id == "csl_storage_integrity":
        print(format_sweep(xcom("report", "summary")))
    elif dag_id == "csl_storage_replication":
        print(format_replication(xcom("report", "summary"), xcom("plan", "plan")))
    elif dag_id == "csl_storage_publication":
        print(format_publication(xcom("publish", "publication"), os.environ.get("CDN_BASE_URL", "")))
    elif dag_id == "csl_cdn_purge":
        print(format_purge(xcom("report", "summary"), xcom("plan", "plan")))
    elif dag_id == "csl_performance_report":
        print(format_report(xcom("report"), client.base_url, run_id))
    return int(run["state"] != "success")


def main() -> int:
    load_env_file(REPO / ".env")
    base_url = os.environ["AIRFLOW__API__BASE_URL"]
    password = os.environ["CSL_AIRFLOW_ADMIN_PASSWORD"]
    client = AirflowClient(base_url, "admin", password)
    failures = 0
    started = datetime.now(UTC).isoformat()
    # a statistics snapshot before the chain: the report's window then covers the whole night
    import subprocess

    subprocess.run([sys.executable, "-m", "csl", "snapshot"], check=True, stdout=subprocess.DEVNULL)
    shown: set[tuple[str, str]] = set()
    for dag_id, conf in DEMO_DAGS:
        client.wait_for_dag(dag_id)
        edge_demo = EdgeDemo() if dag_id == "csl_cdn_purge" else None
        if edge_demo is not None:
            edge_demo.before()
        response = client.trigger(dag_id, conf)
        if response.status_code >= 400:
            print(f"trigger {dag_id}: HTTP {response.status_code} {response.text}")
            return 1
        # unpausing also starts the run of the latest scheduled interval (catchup is off): the
        # schedule at work. Whichever runs first does the work; the other shows a rerun is a no-op.
        client.unpause(dag_id)
        run_id = response.json()["dag_run_id"]
        print(f"triggered {dag_id} ({run_id}); waiting…", flush=True)
        client.wait_for_run(dag_id, run_id)
        time.sleep(1)
        runs = client.request("GET", f"/dags/{dag_id}/dagRuns",
                              params={"start_date_gte": started, "order_by": "start_date"}).json()["dag_runs"]
        for run in runs:
            if (dag_id, run["dag_run_id"]) in shown:
                continue
            if run["state"] not in ("success", "failed"):
                run = client.wait_for_run(dag_id, run["dag_run_id"])
            shown.add((dag_id, run["dag_run_id"]))
            failures += show(client, dag_id, run)
        if edge_demo is not None:
            edge_demo.after()
        print()
    print()
    executor = os.environ.get("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    print(f"Executor:    {executor}; task instances per host: "
          + ", ".join(f"{host} {n}" for host, n in sorted(WORKERS.items())))
    if executor == "CeleryExecutor":
        print(f"             broker: Redis on {os.environ['AIRFLOW__CELERY__BROKER_URL'].rsplit('@', 1)[1]}; worker logs: "
              f"{REPO / '.local' / 'stack' / 'logs'}/airflow-worker-*.log")
    print(f"Airflow UI:  {base_url}   (login: admin / {password})")
    print(f"Settings:    {REPO / '.env'}   (python -m csl health works in any shell)")
    print(f"Logs:        {REPO / '.local' / 'stack' / 'logs'}")
    print("Stop:        make stop")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
