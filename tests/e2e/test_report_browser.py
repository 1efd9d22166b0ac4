"""Headless Chromium (Debian's ``chromium``) against the real Airflow UI: log in with the
simple auth manager's form, open Browse → Performance reports (the plugin's external view),
open the newest report inside it and check what a reader sees: charts drawn, tables filled.
The screenshots are kept in ``.local/artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import run_dag

pytestmark = pytest.mark.timeout(900)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".local" / "artifacts"
DAG_ID = "csl_performance_report"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_report_view_renders_charts_and_tables_inside_the_airflow_ui(airflow, stack_env, browser):
    run_id, run, states = run_dag(airflow, DAG_ID, {"make_report": "always", "window_hours": 1})
    assert run["state"] == "success", states
    report_id = airflow.xcom(DAG_ID, run_id, "report")["report_id"]
    base = stack_env["AIRFLOW__API__BASE_URL"].rstrip("/")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{base}/")
    page.locator("input[name='username']").fill("admin")
    page.locator("input[name='password']").fill(stack_env["CSL_AIRFLOW_ADMIN_PASSWORD"])
    page.locator("button[type='submit']").click()
    page.wait_for_url(lambda url: "/login" not in url)

    page.goto(f"{base}/plugin/csl-performance-reports")
    listing = page.frame_locator("iframe")
    link = listing.locator(f"#reports a[href='{report_id}/']")
    link.wait_for()
    link.click()
    report = page.frame_locator("iframe")
    report.locator("#charts svg.chart").first.wait_for()
    charts = report.locator("#charts svg.chart")
    assert charts.count() >= 1
    assert report.locator("#charts svg.chart rect, #charts svg.chart polyline").count() >= 3  # bars/lines drawn
    top_rows = report.locator("table[data-table='top_queries_total_time'] tbody tr")
    assert top_rows.count() >= 1
    assert report.locator("table[data-table='tables'] tbody tr").count() >= 5  # the platform's tables
    assert "Performance report" in report.locator("header h1").inner_text()
    page.screenshot(path=str(ARTIFACTS / "report_view_in_airflow_ui.png"), full_page=True)

    direct = context.new_page()  # same login: the page itself, as the task's extra link opens it
    direct.goto(f"{base}/csl-reports/{report_id}/")
    assert direct.locator("svg.chart").count() >= 1
    direct.screenshot(path=str(ARTIFACTS / "report_page.png"), full_page=True)
    assert (ARTIFACTS / "report_view_in_airflow_ui.png").stat().st_size > 10_000
    context.close()
