"""End to end: the CDN purge DAG in the real Airflow drains the purge queue and a person's URLs
through the real Varnish edge (the next GET is a MISS with the new bytes), shows a dry run's
batches and sends nothing, fails a run whose URL lies outside every zone before anything is
written, and refuses bad Params at the trigger (issue 15)."""

from __future__ import annotations

import json
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


# -- asynchronous providers: the deferred wait in the real triggerer ---------------------------------
ENDPOINT = "subscriptions/e2e/resourceGroups/rg/providers/Microsoft.Cdn/profiles/p/afdEndpoints/static"


class ArmServer:
    """A local server speaking Azure Resource Manager's documented shapes for a Front Door purge:
    the client-credentials token, ``POST …/purge`` → 202 with ``Azure-AsyncOperation`` and
    ``Retry-After``, and the operation's status, which the test decides."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        arm = self
        self.ops: dict[str, str] = {}
        self.purges: list[dict] = []
        self.polls = 0

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict | None = None, **headers: str) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/oauth2/v2.0/token"):
                    return self._reply(200, {"token_type": "Bearer", "expires_in": 3599,
                                             "access_token": "eyJ-e2e-access-token"})
                if f"/{ENDPOINT}/purge?" in self.path:
                    op = uuid.uuid4().hex
                    arm.ops[op] = "InProgress"
                    arm.purges.append(json.loads(body))
                    location = f"{arm.base}/subscriptions/e2e/providers/Microsoft.Cdn/operationResults/{op}"
                    return self._reply(202, None, **{"Azure-AsyncOperation": location + "?api-version=2024-02-01",
                                                     "Retry-After": "1"})
                return self._reply(404, {"error": {"code": "NotFound", "message": self.path}})

            def do_GET(self) -> None:
                op = self.path.split("?")[0].rsplit("/", 1)[-1]
                if op not in arm.ops:
                    return self._reply(404, {"error": {"code": "NotFound", "message": "no such operation"}})
                arm.polls += 1
                body = {"status": arm.ops[op]}
                if arm.ops[op] == "Failed":
                    body["error"] = {"code": "PurgeFailed", "message": "the e2e purge failed"}
                return self._reply(200, body, **{"Retry-After": "1"})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def azure_zone(airflow):
    """The static zone on Azure Front Door (this local server), through an Airflow connection;
    removed afterwards (the other zones stay on the local edge)."""
    arm = ArmServer()
    conn = {"connection_id": "csl_cdn_static", "conn_type": "http", "host": "https://static.e2e.example/s",
            "login": "e2e-client-id", "password": "e2e-client-secret-value",
            "extra": json.dumps({"provider": "azure", "zone_id": ENDPOINT, "tenant_id": "e2e-tenant",
                                 "options": {"api_base": arm.base, "login_base": arm.base}})}
    created = airflow.request("POST", "/connections", json=conn)
    assert created.status_code in (200, 201), created.text
    try:
        yield arm
    finally:
        airflow.request("DELETE", "/connections/csl_cdn_static")
        airflow.pause(DAG)
        arm.close()


def _wait(check, what: str, timeout: float = 300):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _states(airflow, run_id: str) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in airflow.task_instances(DAG, run_id)}


def test_an_asynchronous_purge_waits_in_the_triggerer_survives_its_restart_and_ends_the_task(
        airflow, azure_zone, stack, settings):
    settle(airflow, DAG)
    arm = azure_zone
    response = airflow.trigger(DAG, {"urls": ["https://static.e2e.example/s/app.js"]})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    _wait(lambda: _states(airflow, run_id).get("await_completion") == "deferred", "the wait to be deferred")
    assert arm.purges == [{"contentPaths": ["/s/app.js"], "domains": ["static.e2e.example"]}]

    # the triggerer goes away mid-wait; a new one re-creates the trigger from what it serialized
    stack.stop("airflow-triggerer")
    polls = arm.polls
    stack.start("airflow-triggerer")
    _wait(lambda: arm.polls > polls, "polls from the restarted triggerer")
    assert _states(airflow, run_id)["await_completion"] == "deferred"

    arm.ops.update(dict.fromkeys(arm.ops, "Succeeded"))
    run = airflow.wait_for_run(DAG, run_id, timeout=300)
    assert run["state"] == "success", _states(airflow, run_id)
    summary = airflow.xcom(DAG, run_id, "report", key="summary")
    assert summary["by_target"]["azure/static"]["done"] == 1 and summary["pending"] == 0
    with psycopg.connect(settings.database.primary_url) as conn:
        assert conn.execute("SELECT status, request_id LIKE %s FROM csl_ops.cdn_purges WHERE run_key = %s",
                            (f"{arm.base}/%", run_id)).fetchall() == [("done", True)]

    # an operation Azure reports failed fails the wait, naming the batch and Azure's error
    response = airflow.trigger(DAG, {"urls": ["https://static.e2e.example/s/other.js"]})
    run_id = response.json()["dag_run_id"]
    _wait(lambda: _states(airflow, run_id).get("await_completion") == "deferred", "the second wait")
    arm.ops.update({op: "Failed" for op, state in arm.ops.items() if state == "InProgress"})
    run = airflow.wait_for_run(DAG, run_id, timeout=300)
    states = _states(airflow, run_id)
    assert run["state"] == "failed" and states["await_completion"] == "failed", states
    with psycopg.connect(settings.database.primary_url) as conn:
        status, error = conn.execute("SELECT status, error FROM csl_ops.cdn_purges WHERE run_key = %s",
                                     (run_id,)).fetchone()
    assert status == "failed" and "the e2e purge failed" in error
