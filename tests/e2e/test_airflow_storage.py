"""End to end: the integrity sweep, the cleanup and the publication in the real Airflow, on the
seeded providers."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from csl.storage import StorageProvider

from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
SWEEP = "csl_storage_integrity"
CLEANUP = "csl_storage_cleanup"
PUBLICATION = "csl_storage_publication"


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, SWEEP)
    ensure_settled(airflow, CLEANUP)


def test_sweep_maps_shards_reports_every_defect_and_emits_the_asset(airflow, platform, settings):
    # an emptied text field arrives as null from the trigger form: "everything"
    run_id, run, states = run_dag(airflow, SWEEP, {"shards": 3, "deep_sample": 0.05, "prefix": None})
    assert run["state"] == "success", states
    shard_states = [s for name, s in states.items() if name.startswith("sweep[")]
    assert shard_states == ["success"] * 3 and states["plan"] == states["report"] == "success"
    summary = airflow.xcom(SWEEP, run_id, "report", key="summary")
    d = platform["defects"]
    assert summary["shards_done"] == 3 and summary["failed"] == []
    assert summary["findings"]["checksum_mismatch"] == {"primary": len(d["corrupt"])}
    assert summary["findings"]["size_mismatch"] == {"fallback": len(d["truncated"])}
    assert summary["findings"]["fallback_only"] == {"fallback": len(d["fallback_only"])}
    assert summary["findings"]["missing"]["fallback"] == len(d["missing"]) + len(d["unreplicated"])
    assert summary["listed"]["primary"] > 400 and summary["bytes"]["primary"] > 0
    with psycopg.connect(settings.database.primary_url) as conn:
        status = conn.execute("SELECT status FROM csl_ops.storage_sweeps WHERE run_key = %s", (run_id,)).fetchone()
    assert status == ("done",)
    events = airflow.request("GET", "/assets/events", params={"source_dag_id": SWEEP, "source_run_id": run_id})
    assert events.status_code == 200 and events.json()["total_entries"] == 1, events.text

    bad = airflow.trigger(SWEEP, {"shards": 0})
    assert bad.status_code == 400 and "shards" in bad.text


def test_cleanup_dry_run_cap_and_move_through_airflow(airflow, platform, settings):
    primary = StorageProvider(settings.provider("primary"))
    temp = f"tmp/e2e{uuid.uuid4().hex[:6]}/"
    keys = [f"{temp}{i}.wav" for i in range(2)]
    for key in keys:
        primary.put(key, b"RIFF" + key.encode())
    conf = {"temp_prefix": "tmp/", "temp_ttl_h": 0, "orphan_grace_h": 8760}
    for dry in ({}, {"dry_run": True}):  # a manual run is a dry run unless asked otherwise
        run_id, run, states = run_dag(airflow, CLEANUP, {**conf, **dry})
        assert run["state"] == "success", states
        summary = airflow.xcom(CLEANUP, run_id, "cleanup", key="cleanup")
        assert summary["dry_run"] is True and summary["moved"] == 0 and summary["candidates"] >= 2
        assert set(keys) <= {c["key"] for c in summary["sample"]} and len(summary["sample"]) <= 100
        assert all(primary.exists(k) for k in keys)

    bad = airflow.trigger(CLEANUP, {**conf, "temp_prefix": "samples/"})
    assert bad.status_code == 400 and "temp_prefix" in bad.text  # only temporary folders

    run_id, run, states = run_dag(airflow, CLEANUP, {**conf, "max_objects": 1, "dry_run": False})
    assert run["state"] == "failed" and states["cleanup"] == "failed"
    assert all(primary.exists(k) for k in keys)  # over the cap: nothing touched

    run_id, run, states = run_dag(airflow, CLEANUP, {**conf, "dry_run": False})
    assert run["state"] == "success", states
    assert not any(primary.exists(k) for k in keys)
    with psycopg.connect(settings.database.primary_url) as conn:
        rows = conn.execute("SELECT object_key, reason FROM csl_ops.storage_quarantine WHERE run_key = %s "
                            "AND object_key = ANY(%s) ORDER BY object_key", (run_id, keys)).fetchall()
    assert rows == [(k, "expired_upload") for k in keys]


def test_a_provider_down_fails_the_try_by_name_and_the_retry_sweeps_once_it_is_back(airflow, platform, settings,
                                                                                   stack):
    import time
    from urllib.parse import quote

    with psycopg.connect(settings.database.primary_url) as conn:
        open_before = conn.execute("SELECT kind, object_key, provider FROM csl_ops.storage_findings "
                                   "WHERE resolved_at IS NULL ORDER BY 1, 2, 3").fetchall()
    stack.stop("s3-fallback")
    try:
        response = airflow.trigger(SWEEP, {"shards": 2})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        deadline = time.monotonic() + 180
        while True:  # the first try of the plan fails; Airflow schedules the retry
            plan = next(ti for ti in airflow.task_instances(SWEEP, run_id) if ti["task_id"] == "plan")
            if plan["state"] in ("up_for_retry", "failed"):
                break
            assert time.monotonic() < deadline, plan
            time.sleep(1)
        log = airflow.request("GET", f"/dags/{SWEEP}/dagRuns/{quote(run_id, safe='')}/taskInstances/plan/logs/1",
                              params={"full_content": "true"})
        assert log.status_code == 200 and "cannot list provider 'fallback'" in log.text, log.text[-2000:]
    finally:
        stack.start("s3-fallback")
    run = airflow.wait_for_run(SWEEP, run_id, timeout=300)
    assert run["state"] == "success"
    with psycopg.connect(settings.database.primary_url) as conn:
        open_after = conn.execute("SELECT kind, object_key, provider FROM csl_ops.storage_findings "
                                  "WHERE resolved_at IS NULL ORDER BY 1, 2, 3").fetchall()
    assert open_after == open_before  # the outage left no false findings behind


def test_publication_through_airflow_publishes_exactly_the_sound_approved_samples_and_refuses_a_mass_withdrawal(
        airflow, platform, settings):
    """issue 12, item 11: the published bucket (what anyone may read) holds the approved samples whose
    original is sound, nothing else; un-approving the whole catalogue by mistake changes nothing."""
    primary = StorageProvider(settings.provider("primary"))
    published = primary.published()
    run_id, run, states = run_dag(airflow, PUBLICATION, {"dry_run": True})
    assert run["state"] == "success", states
    assert airflow.xcom(PUBLICATION, run_id, "publish", key="publication")["dry_run"] is True
    run_id, run, states = run_dag(airflow, PUBLICATION, {})
    assert run["state"] == "success", states
    summary = airflow.xcom(PUBLICATION, run_id, "publish", key="publication")["providers"][0]
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        approved = {r[0] for r in conn.execute("SELECT file_url FROM audio_samples WHERE approved")}
        sound = set()
        for key in approved:
            found = primary.digest(key)
            if found is not None and found[1] in (None, found[0]):
                sound.add(key)
        assert {o.key for o in published.iter_objects("")} == sound
        assert summary["approved"] == len(approved) and summary["missing"] + summary["corrupt"] == len(approved - sound)
        try:
            conn.execute("UPDATE audio_samples SET approved = false")
            run_id, run, states = run_dag(airflow, PUBLICATION, {})
            assert run["state"] == "failed" and states == {"publish": "failed"}
        finally:
            conn.execute("UPDATE audio_samples SET approved = true WHERE file_url = ANY(%s)", (list(approved),))
        assert {o.key for o in published.iter_objects("")} == sound
