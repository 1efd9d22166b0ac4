"""Monitoring (issue 16): Prometheus, the exporters and the StatsD bridge on the test stack.

The Prometheus configuration and the alert rules pass promtool; the alert rules are evaluated on
input series (``promtool test rules``, tests/monitoring/alerts_test.yml). Live: after real
pipeline steps (an integrity sweep, a settlement run, a statistics snapshot) every panel of the
dashboard's pipelines and platform sections returns a series from the live Prometheus; the
Airflow section is checked in tests/e2e/test_stack_monitoring.py, which runs Airflow, the scale-out
section in tests/e2e/test_airflow_celery.py, which runs it on Celery. Secrets:
the exporters' DSN is in their environment, never in a command line or a log; every service
listens on loopback only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from devstack import MONITORING_SERVICES, REPO

from .promql import alert_rules, dashboard_panels, empty_panels, query, sections, wait_for

PROMETHEUS_DIR = REPO / "stack" / "prometheus"
ALERTS = {"CslDagRunFailed", "CslSweepFoundMissingObjects", "CslReplicaLagHigh", "CslPayoutNeedsReview",
          "CslCdnPurgeQueueGrowing"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", PROMETHEUS_DIR / "alerts.rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    tested = promtool("test", "rules", REPO / "tests" / "monitoring" / "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_rule_has_a_unit_test():
    text = (REPO / "tests" / "monitoring" / "alerts_test.yml").read_text()
    assert {name for name in ALERTS if f"alertname: {name}" in text} == ALERTS


def csl(stack, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "CSL_ENV_FILE": str(stack.env_file)}
    done = subprocess.run([sys.executable, "-m", "csl", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode in (0, 1), stack.redact(done.stdout + done.stderr)  # 1: findings reported
    return done.stdout


@pytest.fixture(scope="module")
def prometheus(monitoring, platform) -> str:
    """The live Prometheus after real pipeline steps on the seeded platform database."""
    url = monitoring.monitoring_urls()["prometheus"]
    started = time.time()
    csl(monitoring, "storage", "sweep")
    csl(monitoring, "settlement", "run")
    csl(monitoring, "snapshot")
    # the edge: one miss, then a hit (it keeps a 404 for 10 s)
    edge = monitoring.urls()["edge"]
    for _ in range(2):
        httpx.get(f"{edge}/audio/samples/00/monitoring-probe.mp3", timeout=10)
    # a scrape after the steps: the sweep's finish time is what the exporter now reports
    wait_for(url, f"csl_storage_sweep_last_finished_timestamp_seconds > {started}", timeout=60,
             what="a scrape after the sweep")
    wait_for(url, 'pg_up{role="replica"} == 1', timeout=30)
    wait_for(url, "increase(varnish_main_cache_hit[30m]) > 0", timeout=30, what="the edge's hit")
    return url


def test_prometheus_config_as_rendered_passes_promtool(monitoring):
    rendered = monitoring.monitoring_dir / "prometheus" / "prometheus.yml"
    checked = promtool("check", "config", rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    assert not re.search(r"\{\{[A-Z_]+\}\}", rendered.read_text()), "a placeholder was left unrendered"


def test_every_target_is_up(prometheus):
    body = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()
    targets = {t["labels"]["job"] + "/" + t["labels"].get("role", ""): t for t in body["data"]["activeTargets"]}
    assert set(targets) == {"prometheus/", "postgres/primary", "postgres/replica", "edge/", "airflow/"}
    wait_for(prometheus, "min(up) == 1", timeout=30, what="every target up")


def test_pipelines_and_platform_panels_each_return_a_series(prometheus):
    # the Airflow section: tests/e2e/test_stack_monitoring.py; the scale-out one (Redis, Celery):
    # tests/e2e/test_airflow_celery.py, where Airflow runs on Celery
    panels = [p for p in dashboard_panels() if p[0] not in ("Airflow", "Scale-out (Celery)")]
    assert {section for section, _, _ in panels} == {"Pipelines (csl_ops)", "Platform"} and len(panels) >= 25
    assert sections() == ["Airflow", "Pipelines (csl_ops)", "Platform", "Scale-out (Celery)"]
    assert empty_panels(prometheus, panels) == []


def values(prometheus: str, expr: str) -> dict[tuple, float]:
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance", "server"))):
            float(r["value"][1]) for r in query(prometheus, expr)}


def test_the_figures_are_the_pipelines_own(prometheus, settings):
    """The exporter's figures equal what csl_ops holds (the seeded defects, the ledger just posted)."""
    import psycopg

    with psycopg.connect(settings.database.primary_url) as conn:
        findings = {(kind, provider): n for kind, provider, n in conn.execute(
            "SELECT kind, provider, count(*) FROM csl_ops.storage_findings WHERE resolved_at IS NULL "
            "GROUP BY 1, 2").fetchall()}
        carried = dict(conn.execute(
            "SELECT a.currency, -sum(p.amount_minor) FROM csl_ops.postings p JOIN csl_ops.ledger_accounts a "
            "ON a.id = p.account_id WHERE a.kind = 'contributor_payable' GROUP BY 1").fetchall())
        uploads = conn.execute("SELECT count(*) FROM audio_samples").fetchone()[0]
    assert findings, "the seeded defects are findings of the sweep"
    shown = values(prometheus, 'csl_storage_findings_open{provider!="none"}')
    assert {(dict(k)["kind"], dict(k)["provider"]): v for k, v in shown.items()} == findings
    assert carried, "the settlement run posted"
    wanted = {c: float(v) for c, v in carried.items()}
    deadline = time.monotonic() + 45  # the exporter keeps the ledger's totals for 30 s (cache_seconds)
    while True:
        shown = values(prometheus, 'csl_ledger_balance_carried_minor{currency!="none"}')
        if {dict(k)["currency"]: v for k, v in shown.items()} == wanted or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {dict(k)["currency"]: v for k, v in shown.items()} == wanted
    assert values(prometheus, "platform_uploads_total") == {(("role", "primary"),): float(uploads)}
    assert values(prometheus, 'csl_storage_listing_objects{provider="primary"}')
    lag = values(prometheus, 'pg_replication_lag{role="replica"}')
    assert len(lag) == 1 and all(v >= 0 for v in lag.values())
    hit_ratio = next(p for p in dashboard_panels("Platform") if p[1] == "Edge hit ratio")[2][0]
    assert 0 < float(query(prometheus, hit_ratio)[0]["value"][1]) <= 1


def test_alert_rules_load_and_evaluate_live(prometheus):
    rules = alert_rules(prometheus)
    assert set(rules) == ALERTS
    deadline = time.monotonic() + 30
    while any(rule.get("evaluationTime") is None or rule.get("lastEvaluation", "").startswith("0001")
              for rule in rules.values()) and time.monotonic() < deadline:
        time.sleep(1)
        rules = alert_rules(prometheus)
    assert {name: (rule["health"], rule.get("lastError", "")) for name, rule in rules.items()} == \
        {name: ("ok", "") for name in ALERTS}


def listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (TCP listen sockets and bound UDP sockets)."""
    found = set()
    for table, wanted_state in (("/proc/net/tcp", "0A"), ("/proc/net/tcp6", "0A"), ("/proc/net/udp", "07"),
                                ("/proc/net/udp6", "07")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == wanted_state:
                found.add(address)
    return found


def test_loopback_only_and_no_secret_on_a_command_line_or_in_a_log(monitoring, prometheus):
    ports = monitoring.ports
    for name in ("prometheus", "statsd", "statsd_bridge", "pg_exporter_primary", "pg_exporter_replica",
                 "edge_exporter"):
        assert listening(ports[name]) == {"0100007F"}, f"{name} must listen on 127.0.0.1 only"
    secrets = [v for v in monitoring.secrets.values() if len(v) >= 6]
    for service in MONITORING_SERVICES:
        pid = monitoring.pid(service)
        assert pid is not None, f"{service} is not running"
        assert os.getpgid(pid) == pid, f"{service} must lead its own process group"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in cmdline], f"{service}: a secret on its command line"
        log_text = (monitoring.logs / f"{service}.log").read_text(errors="replace")
        assert not [s for s in secrets if s in log_text], f"{service}: a secret in its log"
        assert (monitoring.logs / f"{service}.log").stat().st_mode & 0o077 == 0
    for service in MONITORING_SERVICES:
        environ = Path(f"/proc/{monitoring.pid(service)}/environ").read_bytes()
        names = {item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if item}
        assert names <= {"PATH", "HOME", "LANG", "DATA_SOURCE_NAME"}, f"{service}: inherited {names}"
        if service.startswith("pg-exporter-"):  # the DSN, with the metrics role's password: only here
            assert f"csl_metrics:{monitoring.secrets['pg_metrics']}@".encode() in environ
        else:
            assert not [s for s in secrets if s.encode() in environ], f"{service}: a secret in its environment"
    # the exporters' role reads, never writes
    import psycopg

    url = (f"postgresql://csl_metrics:{monitoring.secrets['pg_metrics']}@127.0.0.1:{ports['pg_primary']}"
           "/cultural_sound_lab")
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM csl_ops.storage_findings")
