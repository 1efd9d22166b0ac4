"""End to end: ``csl_revenue_settlement`` in the real Airflow settles the demo data exactly once,
stops at a failing gate, and sends payouts to a Stripe-shaped endpoint."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest

from ..csl.settlement.test_settlement import API_KEY, FakeStripe, verified_accounts
from .conftest import ensure_settled, run_dag

pytestmark = pytest.mark.e2e
DAG = "csl_revenue_settlement"


@pytest.fixture(autouse=True)
def _settled(airflow):
    ensure_settled(airflow, DAG)


def test_settles_then_a_rerun_has_nothing_to_do(airflow, settings):
    with psycopg.connect(settings.database.primary_url) as conn:
        settled_before = conn.execute("SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0]
        completed = conn.execute("SELECT count(*) FROM licenses WHERE payment_status = 'completed'").fetchone()[0]
    run_id, run, states = run_dag(airflow, DAG)
    assert run["state"] == "success", states
    assert states == {"settle": "success", "send_payouts": "skipped", "statement": "success"}
    summary = airflow.xcom(DAG, run_id, "settle")
    assert summary["status"] == "committed" and summary["held"] == 0
    assert settled_before + summary["licences"] == completed
    with psycopg.connect(settings.database.primary_url) as conn:  # splits the platform had paid: recorded, once
        prepaid = conn.execute("SELECT count(*) FROM csl_ops.postings WHERE kind = 'prepaid' AND license_id IS NOT NULL").fetchone()[0]
    assert prepaid > 0 and isinstance(summary["splits_paid_before"], int)
    assert airflow.xcom(DAG, run_id, "settle", key="gate")["success"] is True
    statement = airflow.xcom(DAG, run_id, "statement")
    assert Path(statement["path"]).is_file() and statement["rows"] > 0

    run_id, run, _ = run_dag(airflow, DAG)
    assert run["state"] == "success"
    assert airflow.xcom(DAG, run_id, "settle")["licences"] == 0


def test_bad_params_are_refused_at_trigger(airflow):
    for conf in ({"contributor_share_bps": 12000}, {"minimum_payout_cents": -1}, {"period_start": "last week"}):
        response = airflow.trigger(DAG, conf)
        assert response.status_code == 400 and next(iter(conf)) in response.json()["detail"]


def ledger_counts(conn) -> tuple[int, int, int]:
    return conn.execute("SELECT (SELECT count(*) FROM csl_ops.postings), (SELECT count(*) FROM csl_ops.payouts), "
                        "(SELECT count(*) FROM csl_ops.settled_licences)").fetchone()


def test_a_failing_gate_fails_the_run_keeps_the_findings_and_posts_nothing(airflow, settings):
    pi = f"pi_e2e_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
        conn.execute("INSERT INTO payment_intents (id, user_id, amount, currency, status) "
                     "SELECT %s, user_id, 10.005, 'usd', 'succeeded' FROM licenses LIMIT 1", (pi,))
        bad = conn.execute(  # a sale of 10.005 dollars: a real half cent
            "INSERT INTO licenses (user_id, audio_sample_id, license_type, price, payment_status, payment_intent_id) "
            "SELECT user_id, audio_sample_id, license_type, 10.005, 'completed', %s FROM licenses "
            "WHERE audio_sample_id IS NOT NULL LIMIT 1 RETURNING id::text", (pi,)).fetchone()[0]
        before = ledger_counts(conn)
    try:
        run_id, run, states = run_dag(airflow, DAG, {"send_payouts": True})
        assert run["state"] == "failed"
        assert states == {"settle": "failed", "send_payouts": "upstream_failed", "statement": "upstream_failed"}
        settle_ti = next(ti for ti in airflow.task_instances(DAG, run_id) if ti["task_id"] == "settle")
        assert settle_ti["try_number"] == 1, "a failed gate is not retried: the data must be fixed"
        findings = airflow.xcom(DAG, run_id, "settle", key="findings")
        assert [(f["kind"], f["license_id"]) for f in findings] == [("sub_unit_price", bad)]
        gate = airflow.xcom(DAG, run_id, "settle", key="gate")
        assert gate["success"] is False and {"check": "findings", "violations": 1} in gate["checks"]
        with psycopg.connect(settings.database.primary_url) as conn:
            status, kept_gate = conn.execute("SELECT status, gate FROM csl_ops.settlement_runs WHERE run_key = %s",
                                             (f"{DAG}/{run_id}",)).fetchone()
            assert status == "gate_failed" and kept_gate["validation"], "the validation result is kept"
            assert conn.execute(
                "SELECT f.kind, f.license_id::text FROM csl_ops.settlement_findings f JOIN csl_ops.settlement_runs r "
                "ON r.id = f.run_id WHERE r.run_key = %s", (f"{DAG}/{run_id}",)).fetchall() == [("sub_unit_price", bad)]
            assert ledger_counts(conn) == before, "nothing posted, no payout instructed"
    finally:
        with psycopg.connect(settings.database.primary_url, autocommit=True) as conn:
            conn.execute("DELETE FROM licenses WHERE payment_intent_id = %s", (pi,))
            conn.execute("DELETE FROM payment_intents WHERE id = %s", (pi,))


@pytest.fixture
def stripe_endpoint(airflow, settings):
    """FakeStripe behind a real HTTP server on 127.0.0.1, reached through the ``csl_payouts`` connection;
    it knows the connected accounts the platform verified, and refuses any other destination."""
    with psycopg.connect(settings.database.primary_url) as conn:
        stripe = FakeStripe(accounts=verified_accounts(conn))

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if self.command == "POST" else url.query
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = stripe.handle(self.command, url.path, dict(parse_qsl(raw, keep_blank_values=True)), headers)
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    airflow.request("DELETE", "/connections/csl_payouts")
    created = airflow.request("POST", "/connections", json={
        "connection_id": "csl_payouts", "conn_type": "http", "host": "127.0.0.1", "port": server.server_address[1],
        "schema": "http", "password": API_KEY})
    assert created.status_code in (200, 201), created.text
    try:
        yield stripe
    finally:
        airflow.request("DELETE", "/connections/csl_payouts")
        server.shutdown()
        server.server_close()


def test_send_payouts_against_a_stripe_shaped_endpoint(airflow, settings, stripe_endpoint):
    with psycopg.connect(settings.database.primary_url) as conn:
        pending_splits = set(conn.execute("SELECT license_id::text, contributor_id::text FROM revenue_splits "
                                          "WHERE status = 'pending'").fetchall())
    run_id, run, states = run_dag(airflow, DAG, {"send_payouts": True})
    assert run["state"] == "success", states
    assert states == {"settle": "success", "send_payouts": "success", "statement": "success"}
    with psycopg.connect(settings.database.primary_url) as conn:
        payouts = conn.execute("SELECT idempotency_key, amount_minor, currency, status, transfer_id "
                               "FROM csl_ops.payouts ORDER BY id").fetchall()
        covered = set(conn.execute(
            "SELECT pl.license_id::text, pl.contributor_id::text FROM csl_ops.payout_licences pl "
            "JOIN csl_ops.payouts po ON po.id = pl.payout_id WHERE po.status = 'confirmed'").fetchall())
        now_paid = set(conn.execute("SELECT license_id::text, contributor_id::text FROM revenue_splits "
                                    "WHERE status = 'paid'").fetchall())
        destinations = conn.execute("SELECT DISTINCT po.destination = pa.account_id FROM csl_ops.payouts po "
                                    "JOIN csl_ops.payout_accounts pa USING (contributor_id)").fetchall()
    assert payouts and {p[3] for p in payouts} == {"confirmed"} and destinations == [(True,)]
    assert airflow.xcom(DAG, run_id, "send_payouts")["confirmed"] == len(payouts)
    posts = stripe_endpoint.posts()
    assert sorted((p["idempotency_key"], int(p["amount"]), p["currency"]) for p in posts) == \
        sorted((key, amount, currency) for key, amount, currency, _, _ in payouts), "each payout sent once, as instructed"
    assert {p[4] for p in payouts} == {t["id"] for t in stripe_endpoint.transfers}
    # exactly the splits the confirmed payouts cover went from pending to paid
    assert pending_splits & now_paid == pending_splits & covered != set()

    run_id, run, states = run_dag(airflow, DAG, {"send_payouts": True})  # nothing left to send
    assert run["state"] == "success" and airflow.xcom(DAG, run_id, "send_payouts")["confirmed"] == 0
    assert len(stripe_endpoint.posts()) == len(posts)
