"""End to end: the Airflow UI's trigger form is the front door (issue #12, items 18, 19, 21).

- A conf key no Param declares is refused with HTTP 400 at trigger time (REST, backfills — the
  routes the UI posts to), naming it; a run created past the API server (``airflow dags trigger``)
  fails in its first tasks, before any work, naming it.
- Settlement period bounds that do not exist or are not ISO (``2026-02-30``, ``2026-1-5``) are
  refused with HTTP 400; ISO dates and date-times with offsets are accepted, and null means none.
- In headless Chromium (Debian's ``chromium``) every DAG's trigger form opens with its defaults
  valid, triggers a run with exactly the values it shows, then again with one field edited; each run
  must succeed. Screenshots in ``.local/artifacts/``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ensure_settled

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / ".local" / "artifacts"
DAG_IDS = sorted(p.stem for p in (REPO / "dags").glob("csl_*.py"))
SETTLEMENT, HEALTH, CLEANUP = "csl_revenue_settlement", "csl_platform_health", "csl_storage_cleanup"


def wait_for_run(airflow, dag_id: str, run_id: str, timeout: float = 900) -> dict:
    """The finished run; a slow answer from a busy API server is asked again, not a failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = airflow.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
        except httpx.TimeoutException:
            pass
        assert time.monotonic() < deadline, f"{dag_id} run {run_id} not finished after {timeout:.0f}s"
        time.sleep(2)


def run_count(airflow, dag_id: str) -> int:
    return airflow.request("GET", f"/dags/{dag_id}/dagRuns").json()["total_entries"]


# -- item 18: undeclared conf keys ------------------------------------------------------------------

def test_an_undeclared_conf_key_is_refused_at_trigger_naming_it(airflow):
    for dag_id in (CLEANUP, SETTLEMENT, HEALTH):
        ensure_settled(airflow, dag_id)
    before = {dag_id: run_count(airflow, dag_id) for dag_id in (CLEANUP, SETTLEMENT)}

    response = airflow.trigger(CLEANUP, {"dryrun": True})  # the typo that ran the cleanup for real
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "'dryrun'" in detail and "did you mean 'dry_run'?" in detail and "declared: dry_run" in detail
    assert "\n" not in detail

    response = airflow.trigger(SETTLEMENT, {"dry_run": True, "sendpayouts": False, "period": "2026"})
    assert response.status_code == 400
    assert "'period'" in response.json()["detail"] and "'sendpayouts'" in response.json()["detail"]

    # the form's backfill mode posts dag_run_conf to /backfills; its dry run is refused the same way
    response = airflow.request("POST", "/backfills/dry_run", json={
        "dag_id": SETTLEMENT, "from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-02T00:00:00Z",
        "dag_run_conf": {"dryrun": True}})
    assert response.status_code == 400 and "'dryrun'" in response.json()["detail"], response.text

    # JSON's NaN reaches Airflow's number checks as a float every bound lets through
    response = airflow.request("POST", f"/dags/{HEALTH}/dagRuns", headers={"content-type": "application/json"},
                               content=b'{"logical_date": null, "conf": {"max_replica_lag_s": NaN}}')
    assert response.status_code == 400 and "max_replica_lag_s" in response.json()["detail"], response.text
    assert {dag_id: run_count(airflow, dag_id) for dag_id in before} == before


def test_the_guard_tells_nothing_to_a_caller_who_may_not_trigger(airflow):
    url = f"{airflow.base_url}/api/v2/dags/{CLEANUP}/dagRuns"
    body = {"logical_date": None, "conf": {"dryrun": True}}
    anonymous = httpx.post(url, json=body, timeout=30)
    forged = httpx.post(url, json=body, headers={"Authorization": "Bearer forged"}, timeout=30)
    assert (anonymous.status_code, forged.status_code) == (401, 403)
    assert "dry_run" not in anonymous.text + forged.text  # the Params stay unseen


def test_a_run_created_past_the_api_server_fails_before_any_work_naming_the_key(airflow, stack, settings):
    import psycopg

    ensure_settled(airflow, HEALTH)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "trigger", HEALTH, "--conf", json.dumps({"dryrun": True}),
         "--output", "json"], env=stack.airflow_process_env(), capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = json.loads(result.stdout.strip().splitlines()[-1])[0]["dag_run_id"]  # after the CLI's warnings
    run = wait_for_run(airflow, HEALTH, run_id, timeout=300)
    assert run["state"] == "failed"
    tis = airflow.task_instances(HEALTH, run_id)
    assert {ti["state"] for ti in tis} == {"failed"} and {ti["try_number"] for ti in tis} == {1}  # no retry
    log = airflow.request("GET", f"/dags/{HEALTH}/dagRuns/{run_id}/taskInstances/check_database/logs/1",
                          headers={"Accept": "application/json"}).text
    assert "conf key(s) not declared as Params: 'dryrun'" in log
    with psycopg.connect(settings.database.primary_url) as conn:  # the summary recorded nothing either
        rows = conn.execute("SELECT count(*) FROM csl_ops.task_runs WHERE dag_id = %s AND run_id = %s",
                            (HEALTH, run_id)).fetchone()[0]
    assert rows == 0


# -- item 19: settlement period bounds --------------------------------------------------------------

@pytest.mark.parametrize("conf", [
    {"period_start": "2026-02-30"}, {"period_start": "2026-1-5"}, {"period_start": "2026-13-01"},
    {"period_start": "yesterday"}, {"period_start": ""}, {"period_end": "2026-02-30T10:00:00Z"},
    {"period_end": "2026-11-01T24:00:00Z"},
], ids=lambda conf: repr(next(iter(conf.values()))))
def test_a_period_bound_that_is_not_a_real_iso_instant_is_refused(airflow, conf):
    ensure_settled(airflow, SETTLEMENT)
    response = airflow.trigger(SETTLEMENT, {**conf, "dry_run": True})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    name = next(iter(conf))
    assert detail.startswith(f"{SETTLEMENT}: {name} ") and "ISO date" in detail and "\n" not in detail


def test_iso_dates_and_datetimes_with_offsets_are_accepted(airflow):
    ensure_settled(airflow, SETTLEMENT)
    conf = {"period_start": "2026-01-01T00:00:00+01:00", "period_end": "2026-12-31", "dry_run": True}
    response = airflow.trigger(SETTLEMENT, conf)
    assert response.status_code == 200, response.text
    run = wait_for_run(airflow, SETTLEMENT, response.json()["dag_run_id"], timeout=600)
    assert {k: run["conf"][k] for k in conf} == conf
    assert run["state"] == "success"


# -- item 21: every trigger form, in a real browser -------------------------------------------------

# One edit per DAG, made the way a person would: kind of field, Param, what they enter, the conf value.
EDITS = {
    "csl_cdn_purge": ("switch", "dry_run", True, True),
    "csl_db_maintenance": ("text", "tables", "licenses", ["licenses"]),
    "csl_index_install": ("switch", "dry_run", True, True),
    "csl_performance_report": ("text", "window_hours", "2", 2),
    "csl_platform_health": ("select", "tolerate", "database.replica", ["database.replica"]),
    "csl_revenue_settlement": ("text", "period_start", "2026-01-01", "2026-01-01"),
    "csl_storage_cleanup": ("switch", "dry_run", True, True),
    "csl_storage_publication": ("switch", "dry_run", True, True),
    "csl_storage_integrity": ("text", "prefix", "samples/", "samples/"),
    "csl_storage_replication": ("switch", "dry_run", True, True),
}


@pytest.fixture(scope="module")
def ui(airflow, stack_env):
    """A logged-in page of the Airflow UI in headless Chromium."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright import sync_api  # in requirements-dev (no browser download: Debian's chromium is used)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            page.set_default_timeout(120_000)  # a busy 2-core machine runs several Airflows
            page.goto(f"{airflow.base_url}/")
            page.locator("input[name='username']").fill("admin")
            page.locator("input[name='password']").fill(stack_env["CSL_AIRFLOW_ADMIN_PASSWORD"])
            page.locator("button[type='submit']").click()
            page.wait_for_url(lambda url: "/login" not in url)
            yield page
        finally:
            browser.close()


def open_form(page, base_url: str, dag_id: str):
    page.goto(f"{base_url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    page.wait_for_timeout(500)  # the form validates its fields once they are drawn
    return dialog


def shown_values(dialog) -> dict:
    """What the form shows, per Param: the text of a field, the state of a switch, a list's lines,
    a selection's value(s)."""
    shown = {}
    for field in dialog.locator("[name^='element_']").all():
        tag, kind, name, value, checked = field.evaluate("e => [e.tagName, e.type, e.name, e.value, e.checked]")
        name = name.removeprefix("element_")
        if kind == "checkbox":
            shown[name] = checked
        elif tag == "TEXTAREA":
            shown[name] = [line for line in value.splitlines() if line.strip()]
        else:
            shown[name] = value
    return shown


def matches(param: dict, shown, value) -> bool:
    """Whether the run's conf value is what the form showed for this Param."""
    types = param["schema"].get("type") or []
    types = types if isinstance(types, list) else [types]
    if isinstance(shown, bool):  # a switch; a null-able one shows null ("automatic", per its description) as off
        return value is shown or (value is None and shown is False and "null" in types)
    if isinstance(shown, list) or "array" in types:  # lines of a text area, or a multi-select's values
        items = shown if isinstance(shown, list) else [v for v in shown.split(",") if v]
        return value == items or (value is None and not items)
    if shown == "":
        return value is None
    if {"integer", "number"} & set(types) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.isclose(float(shown), value)
    return value == shown


def edit(page, dialog, kind: str, name: str, value) -> None:
    field = dialog.locator(f"[name='element_{name}']")
    if kind == "text":
        field.fill(value)
        field.blur()
    elif kind == "switch":
        if field.is_checked() is not value:
            dialog.locator(f"[id='switch:element_{name}']").click()
    else:  # a selection: open it, pick the option (Escape would close the whole dialog)
        dialog.locator("[role='group']", has=page.locator(f"[name='element_{name}']")).get_by_role("combobox").click()
        page.get_by_role("option", name=value, exact=True).click()
    page.wait_for_timeout(300)


def trigger_from_form(page, airflow, dag_id: str, dialog, shot: str) -> dict:
    """Checks the form is valid, triggers, and returns the finished run; the run's conf must be what
    the form showed, Param by Param."""
    params = airflow.request("GET", f"/dags/{dag_id}/details").json()["params"]
    shown = shown_values(dialog)
    assert sorted(shown) == sorted(params), "every Param has a field"
    page.screenshot(path=str(ARTIFACTS / f"trigger_form_{shot}.png"), full_page=True)
    button = dialog.get_by_role("button", name="Trigger", exact=True)
    assert button.is_enabled(), f"{dag_id}: the Trigger button is disabled with {shown}"
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/dags/{dag_id}/dagRuns")) \
            as answer:  # the form posts to the public REST API: the route the guard sits in front of
        button.click()
    assert answer.value.status == 200, answer.value.text()
    run_id = answer.value.json()["dag_run_id"]
    run = wait_for_run(airflow, dag_id, run_id, timeout=900)
    different = {name: (shown[name], run["conf"].get(name)) for name in params
                 if not matches(params[name], shown[name], run["conf"].get(name))}
    assert different == {}, f"{dag_id}: the run's conf is not what the form showed (shown, conf): {different}"
    states = {f"{ti['task_id']}[{ti['map_index']}]": ti["state"] for ti in airflow.task_instances(dag_id, run_id)}
    assert run["state"] == "success", states
    return run


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_trigger_form_runs_its_defaults_and_an_edited_field(airflow, ui, dag_id):
    assert dag_id in EDITS, f"{dag_id}: say which field the browser test edits"
    ensure_settled(airflow, dag_id)  # the form unpauses the DAG: its scheduled run is done first

    dialog = open_form(ui, airflow.base_url, dag_id)
    run = trigger_from_form(ui, airflow, dag_id, dialog, dag_id)
    if dag_id == CLEANUP:  # a manual run left on "automatic" is a dry run
        result = airflow.xcom(dag_id, run["dag_run_id"], "cleanup", key="cleanup")
        assert result["dry_run"] is True and result["moved"] == 0
    if dag_id == SETTLEMENT:  # defaults: every period, no payout sent
        states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(dag_id, run["dag_run_id"])}
        assert states["send_payouts"] == "skipped"
        assert run["conf"]["period_start"] is None and run["conf"]["period_end"] is None

    kind, name, entered, conf_value = EDITS[dag_id]
    dialog = open_form(ui, airflow.base_url, dag_id)
    edit(ui, dialog, kind, name, entered)
    run = trigger_from_form(ui, airflow, dag_id, dialog, f"{dag_id}_edited")
    assert run["conf"][name] == conf_value


def test_the_form_shows_a_refused_period_in_one_line_and_starts_nothing(airflow, ui):
    ensure_settled(airflow, SETTLEMENT)
    before = run_count(airflow, SETTLEMENT)
    dialog = open_form(ui, airflow.base_url, SETTLEMENT)
    edit(ui, dialog, "text", "period_start", "2026-02-30")
    with ui.expect_response(lambda r: r.request.method == "POST" and "/dagRuns" in r.url) as answer:
        dialog.get_by_role("button", name="Trigger", exact=True).click()
    assert answer.value.status == 400
    message = dialog.get_by_text("period_start '2026-02-30' refused", exact=False)
    message.first.wait_for()
    message.first.scroll_into_view_if_needed()
    ui.screenshot(path=str(ARTIFACTS / "trigger_form_refused_period.png"), full_page=True)
    assert run_count(airflow, SETTLEMENT) == before
