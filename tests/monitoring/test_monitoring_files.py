"""The monitoring files without a stack: the dashboard's shape and its datasource, the exporter's
custom queries, the Prometheus template rendered with any ports (``promtool check config``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import yaml
from devstack import REPO

from .promql import DASHBOARD, dashboard_panels

PROMETHEUS_DIR = REPO / "stack" / "prometheus"
GRAFANA_DIR = REPO / "stack" / "grafana"


def test_the_dashboard_is_provisionable_and_every_panel_reads_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    variable = dashboard["templating"]["list"][0]
    assert (variable["type"], variable["current"]["value"]) == ("datasource", uid)
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "csl.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "csl-pipelines"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in panel["targets"])
    titles = [title for _, title, _ in dashboard_panels()]
    for wanted in ("DAG run duration (success)", "Task duration", "Pool slots", "Executor slots", "Scheduler heartbeat",
                   "Open storage findings", "Replication backlog", "CDN purge queue depth", "Payouts by state",
                   "Replica lag", "Edge hit ratio", "Revenue per day"):
        assert wanted in titles


def test_the_custom_queries_declare_every_column_they_return():
    queries = yaml.safe_load((PROMETHEUS_DIR / "postgres-exporter-queries.yaml").read_text())
    queries.update(yaml.safe_load((PROMETHEUS_DIR / "postgres-exporter-replica-queries.yaml").read_text()))
    for namespace, spec in queries.items():
        assert re.fullmatch(r"(csl|platform|pg)_[a-z_]+", namespace)
        assert spec["master"] is True, f"{namespace}: run once, on the database of the DSN"
        columns = [next(iter(metric)) for metric in spec["metrics"]]
        for column, metric in zip(columns, spec["metrics"], strict=True):
            assert metric[column]["usage"] in ("LABEL", "GAUGE", "COUNTER"), (namespace, column)
            assert re.search(rf"\b{column}\b", spec["query"]), f"{namespace}: no column {column} in its SQL"
        assert any(m[c]["usage"] != "LABEL" for c, m in zip(columns, spec["metrics"], strict=True))


def test_the_template_renders_to_a_valid_config(tmp_path):
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text().replace("{{SCRAPE_INTERVAL}}", "5s")
    text = re.sub(r"\{\{[A-Z_]+_PORT\}\}", "9999", text)
    assert "{{" not in re.sub(r"#.*", "", text)
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copyfile(PROMETHEUS_DIR / "alerts.rules.yml", tmp_path / "alerts.rules.yml")
    checked = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
