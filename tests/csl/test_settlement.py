"""Settlement against real PostgreSQL: exact, exactly once, gated; the allocator by property."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict

import httpx
import psycopg
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from csl import settlement
from csl.settlement import GateFailed, Params, SettlementBusy, SettlementParamsError, allocate, split_licence, to_minor

from ..conftest import REPO

# -- the allocator, by property ---------------------------------------------------------------
weights_st = st.dictionaries(st.uuids().map(str), st.integers(min_value=1, max_value=50), min_size=1, max_size=8)


@given(total=st.integers(min_value=0, max_value=10**9), weights=weights_st)
def test_parts_sum_exactly_and_are_never_negative(total, weights):
    parts = allocate(total, weights)
    assert sum(parts.values()) == total
    assert all(v >= 0 for v in parts.values())
    assert set(parts) == set(weights)


@given(total=st.integers(min_value=0, max_value=10**9), weights=weights_st, data=st.data())
def test_allocation_does_not_depend_on_order(total, weights, data):
    shuffled = dict(data.draw(st.permutations(list(weights.items()))))
    assert allocate(total, shuffled) == allocate(total, weights)


@given(total=st.integers(min_value=0, max_value=10**7), weights=weights_st)
def test_each_part_is_within_one_cent_of_its_exact_share(total, weights):
    parts = allocate(total, weights)
    weight_sum = sum(weights.values())
    for key, weight in weights.items():
        assert abs(parts[key] - total * weight / weight_sum) < 1


@given(price=st.integers(min_value=0, max_value=10**8), bps=st.integers(min_value=0, max_value=10_000), weights=weights_st)
def test_licence_split_sums_to_the_price(price, bps, weights):
    platform, parts = split_licence(price, bps, weights)
    assert platform + sum(parts.values()) == price and platform >= 0


@hsettings(max_examples=50)
@given(price=st.integers(min_value=1, max_value=10**6), weights=weights_st,
       cuts=st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=5))
def test_refunds_in_pieces_reverse_the_parts_exactly(price, weights, cuts):
    _, parts = split_licence(price, 7000, weights)
    pieces, left = [], price
    for cut in cuts:
        piece = min(left, cut)
        if piece:
            pieces.append(piece)
            left -= piece
    if left:
        pieces.append(left)
    clawed, before = Counter(), 0
    for piece in pieces:
        clawed.update(settlement._clawback_parts(parts, price, before, piece))
        before += piece
    assert {k: clawed[k] for k in parts} == parts


def test_to_minor_is_exact_and_refuses_sub_cents():
    assert to_minor(9.99) == 999 and to_minor(0.1) == 10 and to_minor(round(19.99 * 3, 2)) == 5997
    assert to_minor(299.7) == 29970 and to_minor("10.00") == 1000
    with pytest.raises(settlement.SubCentAmount):
        to_minor(10.005)


def test_bad_params_are_refused():
    for bad in ({"share_bps": 10001}, {"share_bps": -1}, {"minimum_payout_cents": -5},
                {"period_start": "2026-02-01", "period_end": "2026-01-01"}):
        with pytest.raises(SettlementParamsError):
            Params(**bad)


# -- the run, on real data --------------------------------------------------------------------
def connect(url):
    return psycopg.connect(url, autocommit=True)


def expected_parts(conn, share_bps=7000):
    """Every completed licence's split, computed in Python from the platform rows."""
    samples = dict(conn.execute("SELECT id::text, contributor_id::text FROM audio_samples").fetchall())
    rows = conn.execute(
        "SELECT l.id::text, l.price, l.audio_sample_id::text, g.source_samples FROM licenses l "
        "LEFT JOIN generations g ON g.id = l.generation_id WHERE l.payment_status = 'completed'").fetchall()
    expected = {}
    for license_id, price, sample_id, sources in rows:
        weights = Counter([samples[sample_id]] if sample_id else [samples[s] for s in sources])
        expected[license_id] = split_licence(to_minor(price), share_bps, weights)
    return expected


def posted_parts(conn):
    parts = defaultdict(dict)
    for license_id, contributor, amount in conn.execute(
            "SELECT license_id::text, split_part(posting_key, ':', 3), -amount_minor FROM csl_ops.postings "
            "WHERE posting_key LIKE 'sale:%'").fetchall():
        parts[license_id][contributor] = amount
    return parts


def test_a_run_settles_every_licence_exactly_and_a_rerun_changes_nothing(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(), run_key="run-1")
        assert outcome["status"] == "committed" and outcome["held"] == 0
        expected = expected_parts(conn)
        posted = posted_parts(conn)
        assert outcome["licences"] == len(expected)
        for license_id, (_platform_minor, parts) in expected.items():
            assert posted.get(license_id, {}) == {k: v for k, v in parts.items() if v}, license_id
        markers = dict(conn.execute("SELECT license_id::text, platform_minor FROM csl_ops.settled_licences").fetchall())
        assert markers == {k: v[0] for k, v in expected.items()}
        # every journal entry balances; splits round-trip to the cent, one row per licence × contributor
        assert conn.execute("SELECT count(*) FROM (SELECT entry_id FROM csl_ops.postings GROUP BY 1 "
                            "HAVING sum(amount_minor) <> 0) x").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM (SELECT license_id, contributor_id FROM revenue_splits "
                            "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0] == 0
        assert outcome["splits_reused"] > 0
        fingerprint = settlement.ledger_fingerprint(conn)
        again = settlement.settle(conn, Params(), run_key="run-2")
        assert again["licences"] == 0 and again["clawbacks"]["refunds"] == 0 and again["payouts"] == []
        assert settlement.ledger_fingerprint(conn) == fingerprint
        assert settlement.settle(conn, Params(), run_key="run-1")["status"] == "already committed"


def test_payouts_over_the_minimum_and_the_rest_carried(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(minimum_payout_cents=5000), run_key="run-1")
        paid = {(p["contributor_id"], p["currency"]): p["amount_minor"] for p in outcome["payouts"]}
        assert paid and all(v >= 5000 for v in paid.values())
        balances = settlement.balances(conn)
        assert all(balances[k] == 0 for k in paid)
        carried = {k: v for k, v in balances.items() if v}
        assert carried and all(0 < v < 5000 for v in carried.values())


def test_refunds_after_payout_claw_back_exactly_and_a_negative_balance_is_carried(platform_db):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1")  # pay everything out
        license_id, pi, price = conn.execute(
            "SELECT l.id::text, l.payment_intent_id, l.price FROM licenses l WHERE l.payment_status = 'completed' "
            "AND l.generation_id IS NOT NULL AND cardinality((SELECT source_samples FROM generations g "
            "WHERE g.id = l.generation_id)) >= 2 AND NOT EXISTS (SELECT 1 FROM refunds r "
            "WHERE r.payment_intent_id = l.payment_intent_id) ORDER BY l.price DESC LIMIT 1").fetchone()
        currency = conn.execute("SELECT currency FROM payment_intents WHERE id = %s", (pi,)).fetchone()[0]
        price_minor = to_minor(price)
        part_minor = price_minor // 3
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status, created_at) VALUES "
                     "('re_test_1', %s, %s, %s, 'partial', 'succeeded', now())", (pi, part_minor / 100, currency))
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status, created_at) VALUES "
                     "('re_test_2', %s, %s, %s, 'rest', 'succeeded', now() + interval '1 minute')",
                     (pi, (price_minor - part_minor) / 100, currency))
        conn.execute("UPDATE licenses SET payment_status = 'refunded' WHERE id = %s", (license_id,))
        parts = posted_parts(conn)[license_id]
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-2")
        assert outcome["clawbacks"]["refunds"] == 2
        clawed = defaultdict(int)
        for key, amount in conn.execute("SELECT posting_key, amount_minor FROM csl_ops.postings "
                                        "WHERE posting_key LIKE 'clawback:re_test_%'").fetchall():
            _, _, party = key.split(":")
            if party not in ("platform", "clearing"):
                clawed[party] += amount
        assert dict(clawed) == parts, "a full refund in two pieces reverses every part exactly"
        balances = settlement.balances(conn)
        for contributor in parts:
            assert balances[(contributor, currency)] <= 0  # paid out before: now owes it back, carried
        assert not any(p["contributor_id"] in parts for p in outcome["payouts"])


def test_corrupted_input_is_a_finding_and_the_gate_stops_everything(platform_db):
    with connect(platform_db) as conn:
        bad_price = conn.execute("UPDATE licenses SET price = 10.005 WHERE id = (SELECT id FROM licenses "
                                 "WHERE payment_status = 'completed' ORDER BY id LIMIT 1) RETURNING id::text").fetchone()[0]
        bad_split = conn.execute("UPDATE revenue_splits SET amount = amount + 0.01 WHERE id = (SELECT id FROM "
                                 "revenue_splits ORDER BY id LIMIT 1) RETURNING license_id::text").fetchone()[0]
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-bad")
        kinds = {(f["kind"], f["license_id"]) for f in caught.value.outcome["findings"]}
        assert ("sub_cent_price", bad_price) in kinds and ("split_mismatch", bad_split) in kinds
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM csl_ops.payouts").fetchone()[0] == 0
        status, gate = conn.execute("SELECT status, gate FROM csl_ops.settlement_runs WHERE run_key = 'run-bad'").fetchone()
        assert status == "gate_failed" and gate["success"] is False
        assert any(c["check"] == "findings" and c["violations"] >= 2 for c in gate["checks"])
        assert gate["validation"], "the Great Expectations result is kept"
        assert conn.execute("SELECT count(*) FROM csl_ops.settlement_findings").fetchone()[0] >= 2


def test_after_a_failed_gate_the_fixed_data_settles_under_the_same_run_key(platform_db):
    with connect(platform_db) as conn:
        bad = conn.execute("UPDATE licenses SET price = 10.005 WHERE id = (SELECT id FROM licenses "
                           "WHERE payment_status = 'completed' ORDER BY id LIMIT 1) RETURNING id").fetchone()[0]
        with pytest.raises(GateFailed):
            settlement.settle(conn, Params(dry_run=True), run_key="nightly")
        with pytest.raises(GateFailed):
            settlement.settle(conn, Params(), run_key="nightly")
        conn.execute("UPDATE licenses SET price = 10.00 WHERE id = %s", (bad,))  # the data is fixed
        outcome = settlement.settle(conn, Params(), run_key="nightly")  # the task is cleared and retried
        assert outcome["status"] == "committed" and outcome["held"] == 0
        runs = dict(conn.execute("SELECT run_key, status FROM csl_ops.settlement_runs").fetchall())
        assert runs == {"nightly": "committed", "nightly#dry_run": "gate_failed"}


def test_a_licence_without_any_contributor_is_held_not_given_to_the_platform(platform_db):
    with connect(platform_db) as conn:
        orphan = conn.execute(
            "UPDATE generations SET source_samples = '{}' WHERE id = (SELECT generation_id FROM licenses "
            "WHERE payment_status = 'completed' AND generation_id IS NOT NULL ORDER BY id LIMIT 1) RETURNING id").fetchone()[0]
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-1")
        held = {f["kind"] for f in caught.value.outcome["findings"]}
        assert held == {"unknown_source_samples"}, held
        assert conn.execute("SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0] == 0
        assert orphan


def test_a_refund_on_an_intent_shared_by_two_licences_is_held(platform_db):
    with connect(platform_db) as conn:
        first, second = conn.execute(
            "SELECT id, payment_intent_id FROM licenses WHERE payment_status = 'completed' AND payment_intent_id NOT IN "
            "(SELECT payment_intent_id FROM refunds) ORDER BY id LIMIT 2").fetchall()
        conn.execute("UPDATE licenses SET payment_intent_id = %s WHERE id = %s", (first[1], second[0]))
        conn.execute("UPDATE payment_intents SET currency = (SELECT currency FROM payment_intents WHERE id = %s) "
                     "WHERE id = %s", (first[1], second[1]))
        settlement.settle(conn, Params(), run_key="run-1")
        currency = conn.execute("SELECT currency FROM payment_intents WHERE id = %s", (first[1],)).fetchone()[0]
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status) VALUES "
                     "('re_shared', %s, 1.00, %s, 'partial', 'succeeded')", (first[1], currency))
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-2")
        assert {f["kind"] for f in caught.value.outcome["findings"]} == {"refund_ambiguous_licence"}
        assert conn.execute("SELECT count(*) FROM csl_ops.postings WHERE posting_key LIKE 'clawback:re_shared:%'"
                            ).fetchone()[0] == 0


def test_dry_run_commits_nothing(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(dry_run=True), run_key="dry")
        splits_before = conn.execute("SELECT count(*) FROM revenue_splits").fetchone()[0]
        outcome = settlement.settle(conn, Params(dry_run=True), run_key="dry-2")
        assert outcome["status"] == "dry_run" and outcome["licences"] > 0 and outcome["gate"]["success"]
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM revenue_splits").fetchone()[0] == splits_before
        assert conn.execute("SELECT count(*) FROM csl_ops.settlement_runs").fetchone()[0] == 0


def test_two_concurrent_runs_make_one_ledger(platform_db):
    results, errors = [], []

    def run(key):
        try:
            with connect(platform_db) as conn:
                results.append(settlement.settle(conn, Params(lock_wait_s=0), run_key=key))
        except SettlementBusy as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"concurrent-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) + len(errors) == 2
    assert all("another settlement run holds the settlement lock" in str(e) for e in errors)
    with connect(platform_db) as conn:
        assert sum(r["licences"] for r in results) == conn.execute(
            "SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0]
        assert conn.execute("SELECT count(*), count(DISTINCT posting_key) FROM csl_ops.postings").fetchone()[0] == \
            conn.execute("SELECT count(DISTINCT posting_key) FROM csl_ops.postings").fetchone()[0]


def test_sigkill_mid_run_then_rerun_gives_the_same_ledger(stack, platform_db, tmp_path):
    """A worker killed while it holds the lock leaves nothing; the rerun equals an uninterrupted run."""
    twin = f"t_{uuid.uuid4().hex[:12]}"
    stack.psql(f"CREATE DATABASE {twin} TEMPLATE {platform_db.rsplit('/', 1)[1]} OWNER csl")
    twin_url = platform_db.rsplit("/", 1)[0] + f"/{twin}"
    try:
        with connect(twin_url) as conn:
            settlement.settle(conn, Params(), run_key="nightly")
            uninterrupted = settlement.ledger_fingerprint(conn)

        code = ("import sys, psycopg; sys.path.insert(0, 'include'); from csl import settlement;"
                f"conn = psycopg.connect({platform_db!r}, autocommit=True);"
                "settlement.settle(conn, settlement.Params(), run_key='nightly')")
        worker = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
        with connect(platform_db) as watcher:
            deadline = time.monotonic() + 60
            while not watcher.execute("SELECT count(*) FROM csl_ops.settlement_runs").fetchone()[0] and \
                    not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                        "AND objid = %s", (settlement.LOCK_KEY & 0xFFFFFFFF,)).fetchone()[0]:
                assert time.monotonic() < deadline and worker.poll() is None, "the worker never took the lock"
                time.sleep(0.01)
            time.sleep(0.3)  # well inside the run: allocation and postings under way
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            time.sleep(0.5)
            assert watcher.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == 0
        with connect(platform_db) as conn:
            outcome = settlement.settle(conn, Params(), run_key="nightly")
            assert outcome["status"] == "committed"
            assert settlement.ledger_fingerprint(conn) == uninterrupted
    finally:
        stack.psql(f"DROP DATABASE IF EXISTS {twin} WITH (FORCE)")


def test_statement_csv_has_running_balances(platform_db, tmp_path):
    import csv

    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-1")
        path = tmp_path / "statement.csv"
        with path.open("w", newline="") as out:
            rows = settlement.write_statement(conn, out)
        balances = settlement.balances(conn)
    lines = list(csv.DictReader(path.open()))
    assert len(lines) == rows > 0
    last = {}
    for line in lines:
        last[(line["contributor_id"], line["currency"])] = int(line["balance_minor"])
    assert last == {k: v for k, v in balances.items()}


# -- sending payouts (Stripe's transfer API shape, at the HTTP layer) ---------------------------
def stripe_transport(outcomes: dict[str, tuple[int, dict]], seen: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        form = dict(httpx.QueryParams(request.content.decode()))
        status, body = outcomes.get((form["metadata[contributor_id]"], form["currency"]), (200, None))
        if status == 200 and body is None:
            body = {"id": f"tr_{form['metadata[payout_id]']}", "object": "transfer", "amount": int(form["amount"]),
                    "currency": form["currency"], "destination": form["destination"]}
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def test_payouts_are_sent_with_idempotency_keys_and_their_outcomes_applied(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1")
        payouts = outcome["payouts"]
        assert len(payouts) >= 3
        refused, limited = payouts[0]["contributor_id"], payouts[1]["contributor_id"]
        refused_key = (refused, payouts[0]["currency"])
        limited_key = (limited, payouts[1]["currency"])
        seen: list[httpx.Request] = []
        transport = stripe_transport({
            refused_key: (400, {"error": {"type": "invalid_request_error", "code": "account_invalid",
                                      "message": "The destination account is not connected"}}),
            limited_key: (429, {"error": {"type": "rate_limit_error", "message": "Too many requests"}}),
        }, seen)
        sender = settlement.PayoutSender(endpoint="https://api.stripe.test", api_key="sk_test_x", transport=transport)
        result = sender.send(conn)
        assert (result["confirmed"], result["failed"], result["retry_later"]) == (len(payouts) - 2, 1, 1)
        first = seen[0]
        assert first.url.path == "/v1/transfers" and first.headers["Authorization"] == "Bearer sk_test_x"
        assert first.headers["Idempotency-Key"] == payouts[0]["idempotency_key"]
        form = dict(httpx.QueryParams(first.content.decode()))
        assert form["amount"] == str(payouts[0]["amount_minor"]) and form["currency"] == payouts[0]["currency"]
        statuses = {(c, cur): st for c, cur, st in conn.execute(
            "SELECT contributor_id::text, currency, status FROM csl_ops.payouts").fetchall()}
        assert statuses[refused_key] == "failed" and statuses[limited_key] == "instructed"
        assert {s for k, s in statuses.items() if k not in (refused_key, limited_key)} == {"confirmed"}
        # refused: the money is back on the contributor's balance, carried to the next run
        assert settlement.balances(conn)[(refused, payouts[0]["currency"])] == payouts[0]["amount_minor"]
        paid = conn.execute("SELECT count(*) FROM revenue_splits WHERE status = 'paid' AND payment_date IS NOT NULL "
                            "AND contributor_id = %s", (payouts[2]["contributor_id"],)).fetchone()[0]
        assert paid > 0
        assert conn.execute("SELECT count(*) FROM revenue_splits rs JOIN csl_ops.settled_licences sl USING (license_id) "
                            "WHERE rs.status = 'paid' AND rs.contributor_id = %s AND sl.currency = %s "
                            "AND rs.payment_date > now() - interval '1 minute'", refused_key).fetchone()[0] == 0
        # a second send retries only the rate-limited one, with the same idempotency key
        seen.clear()
        again = sender.send(conn)
        assert [r.headers["Idempotency-Key"] for r in seen] == [payouts[1]["idempotency_key"]]
        assert again["retry_later"] == 1
        sender.close()
