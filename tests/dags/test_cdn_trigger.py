"""The CDN purge's trigger and the operator it resumes: polls asynchronous purges (here Azure Front
Door's documented operation shapes, at the HTTP layer) without blocking the event loop, survives a
triggerer restart by being re-created from ``serialize()``, and the resumed task writes the end
states back to ``csl_ops.cdn_purges`` (real PostgreSQL) and fails naming a purge that failed."""

from __future__ import annotations

import asyncio
import importlib
import json

import httpx
import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from csl.cdn.azure import AzureFrontDoorProvider
from csl.cdn.base import Zone
from csl.config import DatabaseSettings, Secret, Settings
from csl.migrations import migrate
from csl_airflow.cdn import CdnPurgeCompletionOperator
from csl_airflow.triggers import CdnCompletionTrigger

ENDPOINT = "subscriptions/s/resourceGroups/rg/providers/Microsoft.Cdn/profiles/p/afdEndpoints/e"
ZONE = Zone("static", "azure", "https://static.example.com", ENDPOINT)
OPERATION = "https://management.azure.com/subscriptions/s/providers/Microsoft.Cdn/operationResults/{}?api-version=x"


class AzureOperations:
    """Resource Manager's side: a token, and each operation's status as the test sets it."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.polls = 0

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "login.microsoftonline.com":
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ-test-access-token"})
        self.polls += 1
        op = request.url.path.rsplit("/", 1)[-1]
        status = self.status[op]
        body = {"status": status}
        if status == "Failed":
            body["error"] = {"code": "PurgeFailed", "message": "the purge of /app.js failed"}
        return httpx.Response(200, json=body)


class FakeCdn:
    def __init__(self, ops: AzureOperations) -> None:
        async def answer(request):
            return ops.answer(request)
        self.zones = {"static": ZONE}
        self.azure = AzureFrontDoorProvider(tenant_id="t", client_id="c", client_secret=Secret("s3cret"),
                                            transport=httpx.MockTransport(ops.answer),
                                            async_transport=httpx.MockTransport(answer))
        self.closed = False

    def provider(self, name: str):
        return self.azure

    def close(self) -> None:
        self.closed = True


def pending(*ops: str) -> list[dict]:
    return [{"batch_id": f"{i:032x}", "provider": "azure", "zone": "static", "request_id": OPERATION.format(op)}
            for i, op in enumerate(ops, 1)]


def restarted(trigger: CdnCompletionTrigger) -> CdnCompletionTrigger:
    """What a new triggerer does: import the class path, build it from the serialized kwargs
    (after a round trip through JSON, as they are stored in the metadata database)."""
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


def run_trigger(trigger: CdnCompletionTrigger, cdn: FakeCdn, monkeypatch) -> list:
    monkeypatch.setattr(CdnCompletionTrigger, "_cdn", lambda self: cdn)

    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_serialized_trigger_carries_ids_only_and_is_rebuilt_by_a_new_triggerer():
    trigger = CdnCompletionTrigger(conn_ids={"db": "csl_db"}, pending=pending("a"), poll_s=5, timeout_s=60)
    path, kwargs = trigger.serialize()
    assert path == "csl_airflow.triggers.CdnCompletionTrigger"
    assert "s3cret" not in json.dumps(kwargs) and set(kwargs) == {"conn_ids", "pending", "poll_s", "timeout_s"}
    again = restarted(trigger)
    assert again.serialize() == trigger.serialize()


def test_the_trigger_fires_once_every_purge_ended_even_after_a_restart(monkeypatch):
    ops = AzureOperations()
    ops.status.update({"a": "InProgress", "b": "InProgress"})
    cdn = FakeCdn(ops)
    trigger = restarted(CdnCompletionTrigger(conn_ids={}, pending=pending("a", "b"), poll_s=0.01, timeout_s=30))

    original = cdn.azure.poll_async

    async def poll(zone, request_id):  # the operations finish after a few polls
        if ops.polls >= 4:
            ops.status.update({"a": "Succeeded", "b": "Failed"})
        return await original(zone, request_id)

    cdn.azure.poll_async = poll
    events = run_trigger(trigger, cdn, monkeypatch)
    assert len(events) == 1
    assert events[0].payload["states"] == {f"{1:032x}": "done", f"{2:032x}": "failed"}
    assert "the purge of /app.js failed" in events[0].payload["errors"][f"{2:032x}"]  # Azure's own error
    assert cdn.closed and ops.polls >= 6


def test_a_trigger_that_cannot_build_its_providers_says_why_instead_of_hanging(monkeypatch):
    from csl.errors import ConfigError

    def broken(self):
        raise ConfigError("CDN_AZURE_CLIENT_SECRET", "not set")

    monkeypatch.setattr(CdnCompletionTrigger, "_cdn", broken)
    trigger = CdnCompletionTrigger(conn_ids={}, pending=pending("a"), poll_s=0.01)

    async def collect():
        return [event async for event in trigger.run()]

    events = asyncio.run(collect())
    assert events[0].payload == {"error": "CDN_AZURE_CLIENT_SECRET: not set", "states": {}}


@pytest.fixture
def purge_db(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("csl_ops",))
        for i, op in enumerate(("a", "b"), 1):
            queue_id = conn.execute(
                "INSERT INTO csl_ops.cdn_purge_queue (provider, object_key, public_url, reason, source_run) "
                "VALUES ('primary', %s, %s, 'replaced', 't') RETURNING id",
                (f"app{i}.js", f"https://static.example.com/app{i}.js")).fetchone()[0]
            conn.execute("INSERT INTO csl_ops.cdn_purges (batch_id, run_key, provider, zone, kind, items, queue_ids, "
                         "status, request_id) VALUES (%s, 'run', 'azure', 'static', 'url', %s, %s, 'pending', %s)",
                         (f"{i:032x}", [f"https://static.example.com/app{i}.js"], [queue_id], OPERATION.format(op)))
        yield fresh_database, conn


def _operator(url: str) -> CdnPurgeCompletionOperator:
    op = CdnPurgeCompletionOperator(task_id="await_completion", batches=1)
    op.__dict__["settings"] = Settings(database=DatabaseSettings(primary_url=url))  # what the connections give
    return op


def test_the_resumed_task_records_the_end_states_and_fails_naming_the_failed_purge(purge_db):
    url, conn = purge_db
    event = {"states": {f"{1:032x}": "done", f"{2:032x}": "failed"},
             "errors": {f"{2:032x}": "Failed: the purge of /app2.js failed"}}
    with pytest.raises(AirflowFailException, match=f"1 purge batch\\(es\\) failed at the provider: {2:032x}"):
        _operator(url).execute_complete({}, event)
    rows = dict(conn.execute("SELECT batch_id, status FROM csl_ops.cdn_purges").fetchall())
    assert rows == {f"{1:032x}": "done", f"{2:032x}": "failed"}
    purged = conn.execute("SELECT object_key FROM csl_ops.cdn_purge_queue WHERE purged_at IS NOT NULL").fetchall()
    assert purged == [("app1.js",)]
    assert "app2.js failed" in conn.execute("SELECT last_error FROM csl_ops.cdn_purge_queue WHERE object_key = "
                                            "'app2.js'").fetchone()[0]


def test_a_purge_still_running_when_the_trigger_gave_up_is_retried_not_failed(purge_db):
    url, conn = purge_db
    with pytest.raises(AirflowException, match="still in progress") as raised:
        _operator(url).execute_complete({}, {"states": {f"{1:032x}": "done", f"{2:032x}": "pending"}})
    assert not isinstance(raised.value, AirflowFailException)  # a retry defers again
    assert conn.execute("SELECT status FROM csl_ops.cdn_purges WHERE batch_id = %s",
                        (f"{2:032x}",)).fetchone()[0] == "pending"
