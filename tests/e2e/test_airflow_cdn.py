"""End to end: the CDN purge DAG in the real Airflow drains the purge queue and a person's URLs
through the real Varnish edge (the next GET is a MISS with the new bytes), shows a dry run's
batches and sends nothing, fails a run whose URL lies outside every zone before anything is
written, and refuses bad Params at the trigger (issue 15)."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from csl.cdn import CachePolicy, Cdn
from csl.cdn.queue import edge_tags, enqueue_purge
from csl.storage import StorageProvider

from .conftest import run_dag, settle

pytestmark = pytest.mark.e2e
DAG = "csl_cdn_purge"


@pytest.fixture
def edge(airflow, platform, settings):
    """Two published objects served (and cached) by the edge; removed afterwards, the DAG paused."""
    published = StorageProvider(settings.provider("primary")).published()
    folder = f"samples/e2e-cdn-{uuid.uuid4().hex[:8]}"
    keys = [f"{folder}/queued.wav", f"{folder}/asked.wav"]
    headers = CachePolicy().for_content_type("audio/wav")
    with Cdn.from_settings(settings) as cdn:
        urls = [cdn.url("audio", key) for key in keys]

        def put(key: str, body: bytes) -> None:
            published.put(key, body, content_type="audio/wav", metadata=headers.metadata,
                          cache_control=headers.cache_control)

        for key in keys:
            put(key, b"RIFF old " + key.encode())
        yield {"keys": keys, "urls": urls, "put": put, "published": published}
    for key in keys:
        published.delete(key)
    airflow.pause(DAG)


def fetch(url: str) -> tuple[str, bytes]:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-cache"], answer.content


def test_the_queue_and_a_persons_urls_are_purged_and_the_edge_serves_the_new_bytes(airflow, edge, settings):
    settle(airflow, DAG)
    keys, urls = edge["keys"], edge["urls"]
    for url, key in zip(urls, keys, strict=True):
        assert fetch(url) == ("MISS", b"RIFF old " + key.encode())
        assert fetch(url)[0] == "HIT"
        edge["put"](key, b"RIFF new " + key.encode())
        assert fetch(url) == ("HIT", b"RIFF old " + key.encode())  # the edge still serves the old bytes
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        enqueue_purge(conn, provider="primary", key=keys[0], url=urls[0], tags=edge_tags(edge["published"].bucket,
                      keys[0]), reason="replaced", source_run="e2e")

        run_id, run, states = run_dag(airflow, DAG, {"urls": [urls[1]]})
        assert run["state"] == "success", states
        assert states == {"plan": "success", "send": "success", "await_completion": "success", "report": "success"}
        summary = airflow.xcom(DAG, run_id, "report", key="summary")
        audio = summary["by_target"]["varnish/audio"]
        assert audio["done"] >= 1 and audio["items"] >= 2 and summary["failed"] == summary["pending"] == 0
        row = conn.execute("SELECT purged_at IS NOT NULL, purge_id FROM csl_ops.cdn_purge_queue WHERE object_key = %s "
                           "AND source_run = 'e2e'", (keys[0],)).fetchone()
        assert row[0] and row[1] is not None
        batch = conn.execute("SELECT provider, zone, kind, status, items FROM csl_ops.cdn_purges WHERE id = %s",
                             (row[1],)).fetchone()
        assert batch[:4] == ("varnish", "audio", "url", "done") and urls[0] in batch[4]
    for url, key in zip(urls, keys, strict=True):
        assert fetch(url) == ("MISS", b"RIFF new " + key.encode())


def test_a_dry_run_shows_its_batches_and_sends_nothing_and_bad_input_is_refused(airflow, edge, settings):
    settle(airflow, DAG)
    url = edge["urls"][0]
    fetch(url)
    run_id, run, states = run_dag(airflow, DAG, {"urls": [url], "tags": ["sample:e2e"], "zone": "audio",
                                                 "dry_run": True})
    assert run["state"] == "success", states
    assert states["plan"] == "success" and {states[t] for t in ("send", "await_completion", "report")} == {"skipped"}
    plan = airflow.xcom(DAG, run_id, "plan", key="plan")
    assert plan["dry_run"] and {(b["kind"], tuple(b["items"])) for b in plan["batches"]} >= {
        ("url", (url,)), ("tag", ("sample:e2e",))}
    assert fetch(url)[0] == "HIT"  # nothing was purged
    with psycopg.connect(settings.database.primary_url) as conn:
        assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purges WHERE run_key = %s", (run_id,)).fetchone()[0] == 0

    # a URL no zone serves: the run fails at the plan, naming it, before any batch is written
    run_id, run, states = run_dag(airflow, DAG, {"urls": ["https://elsewhere.example.org/a.mp3"]})
    assert run["state"] == "failed" and states["plan"] == "failed", states
    with psycopg.connect(settings.database.primary_url) as conn:
        assert conn.execute("SELECT count(*) FROM csl_ops.cdn_purges WHERE run_key = %s", (run_id,)).fetchone()[0] == 0

    for bad in ({"urls": ["ftp://cdn.example.com/a"]}, {"zone": "video"}, {"tags": ["two words"]}, {"dryrun": True}):
        refused = airflow.trigger(DAG, bad)
        assert refused.status_code == 400 and next(iter(bad)) in refused.text, refused.text
