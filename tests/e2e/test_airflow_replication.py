"""End to end: the replication DAG in the real Airflow repairs what a fresh diff of its prefix
finds, shows its plan on a dry run, and refuses bad Params at the trigger (issue 14). Its keys
live under their own prefix, referenced by rows of their own: the seeded defects stay for the
other tests, and the DAG is paused again afterwards so no sweep's Asset starts it."""

from __future__ import annotations

import hashlib
import os
import uuid

import psycopg
import pytest

from csl.storage import StorageProvider

from .conftest import run_dag, settle

pytestmark = pytest.mark.e2e
DAG = "csl_storage_replication"


@pytest.fixture
def planted(airflow, platform, settings):
    tag = uuid.uuid4().hex[:8]
    prefix = f"e2e-replication-{tag}/"
    primary, fallback = StorageProvider(settings.provider("primary")), StorageProvider(settings.provider("fallback"))
    good = os.urandom(30_000)
    rotted = bytes([good[0] ^ 1]) + good[1:]
    keys = {"fallback_only": f"{prefix}a.wav", "unreplicated": f"{prefix}b.wav", "corrupt": f"{prefix}c.wav"}
    fallback.put(keys["fallback_only"], good, content_type="audio/wav")
    primary.put(keys["unreplicated"], good, content_type="audio/wav")
    fallback.put(keys["corrupt"], good, content_type="audio/wav")
    primary.client.put_object(Bucket=primary.bucket, Key=keys["corrupt"], Body=rotted, ContentType="audio/wav",
                              Metadata={"sha256": hashlib.sha256(good).hexdigest()})
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        template = conn.execute("SELECT id FROM audio_samples ORDER BY id LIMIT 1").fetchone()[0]
        ids = [conn.execute(
            "INSERT INTO audio_samples (title, file_url, file_size, duration, format, sample_rate, cultural_origin, "
            "instrument_type, usage_rights, price_personal, price_commercial, price_enterprise, contributor_id) "
            "SELECT 'e2e replication', %s, %s, duration, format, sample_rate, cultural_origin, instrument_type, "
            "usage_rights, price_personal, price_commercial, price_enterprise, contributor_id FROM audio_samples "
            "WHERE id = %s RETURNING id", (key, len(good), template)).fetchone()[0] for key in keys.values()]
        yield {"prefix": prefix, "keys": keys, "good": good, "primary": primary, "fallback": fallback}
        conn.execute("DELETE FROM audio_samples WHERE id = ANY(%s)", (ids,))
    for key in keys.values():
        primary.delete(key)
        fallback.delete(key)
    airflow.pause(DAG)
    settle_paused(airflow)


def settle_paused(airflow) -> None:
    """Wait until no replication run is active (a paused DAG finishes what it started)."""
    import time

    deadline = time.monotonic() + 300
    while airflow.request("GET", f"/dags/{DAG}/dagRuns", params={"state": ["queued", "running"]}).json()["dag_runs"]:
        assert time.monotonic() < deadline, "replication runs still active"
        time.sleep(1)


def test_a_dry_run_shows_the_plan_then_a_run_repairs_and_verifies_every_copy(airflow, planted):
    settle(airflow, DAG)
    prefix, keys = planted["prefix"], planted["keys"]
    run_id, run, states = run_dag(airflow, DAG, {"mode": "diff", "prefix": prefix, "dry_run": True})
    assert run["state"] == "success", states
    plan = airflow.xcom(DAG, run_id, "plan", key="plan")
    assert plan["dry_run"] and plan["objects"] == 3 and plan["bytes"] == 3 * 30_000
    assert {(c["key"], c["source"], c["destination"], c["reason"]) for c in plan["copies"]} == {
        (keys["fallback_only"], "fallback", "primary", "fallback_only"),
        (keys["unreplicated"], "primary", "fallback", "missing"),
        (keys["corrupt"], "fallback", "primary", "corrupt"),
    }
    assert planted["primary"].digest(keys["corrupt"])[0] != hashlib.sha256(planted["good"]).hexdigest()

    run_id, run, states = run_dag(airflow, DAG, {"mode": "diff", "prefix": prefix, "shards": 2, "concurrency": 2})
    assert run["state"] == "success", states
    assert [s for name, s in states.items() if name.startswith("copy[")] == ["success"]  # one cell: one shard
    summary = airflow.xcom(DAG, run_id, "report", key="summary")
    assert (summary["verified"], summary["failed"], summary["conflicts"], summary["bytes"]) == (3, 0, 0, 90_000)
    for key in keys.values():
        for provider in (planted["primary"], planted["fallback"]):
            assert provider.get(key) == planted["good"], (key, provider.name)
    events = airflow.request("GET", "/assets/events", params={"source_dag_id": DAG, "source_run_id": run_id})
    assert events.status_code == 200 and events.json()["total_entries"] == 1, events.text

    for bad in ({"mode": "everything"}, {"concurrency": 0}, {"max_objects": 0}, {"source": "Primary!"}):
        refused = airflow.trigger(DAG, bad)
        assert refused.status_code == 400 and next(iter(bad)) in refused.text, refused.text
