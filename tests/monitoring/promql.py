"""Reading the shipped dashboard and asking the live Prometheus (its HTTP API) what a panel shows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "stack" / "grafana" / "dashboards" / "csl-pipelines.json"
# Grafana's variables, as a dashboard over the last half hour would fill them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "30m", "$__interval": "15s"}


def dashboard_panels(section: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(section, title, PromQL expressions) of every panel, in the dashboard's order; ``section``:
    only the panels under the row of that title."""
    panels, current = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            continue
        if section is None or current == section:
            panels.append((current, panel["title"], [t["expr"] for t in panel["targets"]]))
    return panels


def sections() -> list[str]:
    return [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "row"]


def grafana_expr(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def query(prometheus: str, expr: str) -> list[dict]:
    """The instant query's result (a list of series); a PromQL error fails loudly."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": grafana_expr(expr)}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def wait_for(prometheus: str, expr: str, *, timeout: float = 60, what: str = "") -> list[dict]:
    """Poll until the query returns a series (scrapes come every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, expr)
        if result:
            return result
        assert time.monotonic() < deadline, f"no series for {what or expr} after {timeout:.0f}s"
        time.sleep(1)


def empty_panels(prometheus: str, panels: list[tuple[str, str, list[str]]], *, timeout: float = 90) -> list[str]:
    """The panel queries that still return no series after ``timeout`` (each panel's every target).
    A ``rate()`` needs two scrapes inside its window, which a loaded machine may not have made yet:
    the empty ones are asked again until then."""
    deadline = time.monotonic() + timeout
    todo = [(f"{section} / {title}: {expr}", expr) for section, title, exprs in panels for expr in exprs]
    while True:
        todo = [(name, expr) for name, expr in todo if not query(prometheus, expr)]
        if not todo or time.monotonic() >= deadline:
            return [name for name, _ in todo]
        time.sleep(2)


def alert_rules(prometheus: str) -> dict[str, dict]:
    """The loaded alerting rules by name, as /api/v1/rules reports them (health, state, lastError)."""
    body = httpx.get(f"{prometheus}/api/v1/rules", params={"type": "alert"}, timeout=10).json()
    return {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
