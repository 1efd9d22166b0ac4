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
from decimal import Decimal

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from csl import settlement
from csl.migrations import migrate
from csl.money import CURRENCY_EXPONENTS, from_minor
from csl.settlement import (
    GateFailed,
    Params,
    SettlementBusy,
    SettlementParamsError,
    allocate,
    arithmetic,
    split_licence,
    to_minor,
)
from csl.settlement import run as settlement_run

from ...conftest import REPO

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
        clawed.update(arithmetic._clawback_parts(parts, price, before, piece))
        before += piece
    assert {k: clawed[k] for k in parts} == parts


def test_to_minor_is_exact_and_refuses_sub_cents():
    usd = lambda amount: to_minor(amount, "usd")
    assert usd(9.99) == 999 and usd(0.1) == 10 and usd(round(19.99 * 3, 2)) == 5997
    assert usd(299.7) == 29970 and usd("10.00") == 1000
    # float noise past 15 significant digits is not money: 0.30000000000000004 is 30 cents
    assert usd(0.1 + 0.2) == 30 and usd(19.99 * 3) == 5997 and usd(1.15 * 100 / 100) == 115
    assert usd(12345678901.23) == 1234567890123
    for sub_cent in (10.005, 0.001, 19.999, "10.005", float("nan"), float("inf")):
        with pytest.raises(settlement.SubUnitAmount):
            usd(sub_cent)


def test_minor_units_follow_each_currencys_iso_4217_exponent():
    # a ¥1,000 licence is 1,000 minor units (not 100,000); 12.345 KWD is 12,345 fils (not 1,234.5)
    assert to_minor(1000.0, "jpy") == 1000 and to_minor(1000, "JPY") == 1000 and to_minor(0.5 * 3, "usd") == 150
    assert to_minor(12.345, "kwd") == 12345 and to_minor(0.1 + 0.2, "bhd") == 300 and to_minor(1.0001, "clf") == 10001
    assert from_minor(1000, "jpy") == 1000 and str(from_minor(12345, "kwd")) == "12.345" and str(from_minor(5, "usd")) == "0.05"
    for amount, currency in ((1000.5, "jpy"), (12.3456, "kwd"), (0.005, "eur")):
        with pytest.raises(settlement.SubUnitAmount):
            to_minor(amount, currency)
    for unknown in ("xyz", "usdt", "", "US", "xau"):
        with pytest.raises(ValueError, match="not a supported ISO 4217 currency"):
            to_minor(1.0, unknown)


EDGE_AMOUNTS = [0.0, 0.01, 0.1, 0.1 + 0.2, 0.3, 0.7 * 3, 1.15, 2.675, 4.35 * 100 / 100, 9.99, 10.005, 10.004999999999999,
                19.99 * 3, 299.7, 1e-3, 1234567.891, 12345678901.23, 99999999999.99, 0.07 * 100, 8.675 - 0.005]


def test_prices_and_refunds_convert_by_one_rule_in_sql_and_python(fresh_database):
    """csl_ops.minor_units (SQL: prices, refunds, platform splits) and to_minor agree on every float,
    in every exponent, and csl_ops.currencies is the same table as csl.money's."""
    import random

    rng = random.Random(5)
    amounts = EDGE_AMOUNTS + [rng.randrange(0, 10**9) / 100 for _ in range(2000)] \
        + [rng.randrange(0, 10**6) / 100 * rng.choice([0.7, 0.3, 0.25, 1 / 3]) for _ in range(2000)] \
        + [a + b for a, b in zip([rng.randrange(0, 10**5) / 100 for _ in range(1000)],
                                 [rng.randrange(0, 10**5) / 100 for _ in range(1000)], strict=True)]
    with connect(fresh_database) as conn:
        migrate(conn, components=("csl_ops",))
        assert dict(conn.execute("SELECT code, exponent FROM csl_ops.currencies").fetchall()) == CURRENCY_EXPONENTS
        for currency in ("usd", "jpy", "kwd", "clf"):
            rows = conn.execute("SELECT a, csl_ops.minor_units(a, exponent) FROM unnest(%s::float8[]) AS a, "
                                "csl_ops.currencies WHERE code = %s", (amounts, currency)).fetchall()
            for amount, minor in rows:
                whole = minor == minor.to_integral_value()
                try:
                    python = to_minor(amount, currency)
                except settlement.SubUnitAmount:
                    python = None
                assert python == (int(minor) if whole else None), (amount, currency, minor, python)
                if whole and 0 <= minor < 10**15:  # and back: the platform's float column round-trips
                    back = conn.execute("SELECT csl_ops.minor_units(csl_ops.major_units(%s, exponent), exponent) "
                                        "FROM csl_ops.currencies WHERE code = %s", (int(minor), currency)).fetchone()[0]
                    assert back == minor, (amount, currency)
            if currency == "usd":
                converted = {a: c for a, c in rows}
                assert converted[0.1 + 0.2] == 30 and converted[10.005] == Decimal("1000.5")


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
        "SELECT l.id::text, l.price, l.audio_sample_id::text, g.source_samples, pi.currency FROM licenses l "
        "JOIN payment_intents pi ON pi.id = l.payment_intent_id "
        "LEFT JOIN generations g ON g.id = l.generation_id WHERE l.payment_status = 'completed'").fetchall()
    expected = {}
    for license_id, price, sample_id, sources, currency in rows:
        weights = Counter([samples[sample_id]] if sample_id else [samples[s] for s in sources])
        expected[license_id] = split_licence(to_minor(price, currency), share_bps, weights)
    return expected


def posted_parts(conn):
    parts = defaultdict(dict)
    for license_id, contributor, amount in conn.execute(
            "SELECT p.license_id::text, a.contributor_id::text, -p.amount_minor FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
            "WHERE p.kind = 'sale' AND p.license_id IS NOT NULL").fetchall():
        parts[license_id][contributor] = amount
    return parts


def test_a_run_settles_every_licence_exactly_and_a_rerun_changes_nothing(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(), run_key="run-1")
        assert outcome.status == "committed" and outcome.held == 0
        expected = expected_parts(conn)
        posted = posted_parts(conn)
        assert outcome.licences == len(expected)
        for license_id, (_platform_minor, parts) in expected.items():
            assert posted.get(license_id, {}) == {k: v for k, v in parts.items() if v}, license_id
        markers = dict(conn.execute("SELECT license_id::text, platform_minor FROM csl_ops.settled_licences").fetchall())
        assert markers == {k: v[0] for k, v in expected.items()}
        # every journal entry balances; splits round-trip to the cent, one row per licence × contributor
        assert conn.execute("SELECT count(*) FROM (SELECT entry_id FROM csl_ops.postings GROUP BY 1 "
                            "HAVING sum(amount_minor) <> 0) x").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM (SELECT license_id, contributor_id FROM revenue_splits "
                            "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0] == 0
        assert outcome.splits_reused > 0
        fingerprint = settlement.ledger_fingerprint(conn)
        again = settlement.settle(conn, Params(), run_key="run-2")
        assert again.licences == 0 and again.clawbacks["refunds"] == 0 and again.payouts == []
        assert settlement.ledger_fingerprint(conn) == fingerprint
        assert settlement.settle(conn, Params(), run_key="run-1").status == "already committed"


def test_payouts_over_the_minimum_and_the_rest_carried(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(minimum_payout_cents=5000), run_key="run-1")
        paid = {(p["contributor_id"], p["currency"]): p["amount_minor"] for p in outcome.payouts}
        assert paid and all(v >= 5000 for v in paid.values())
        balances = settlement.balances(conn)
        assert all(balances[k] == 0 for k in paid)
        # held: at or over the minimum, but the contributor has no verified payout account (carried)
        held = {(h["contributor_id"], h["currency"]): h["balance_minor"] for h in outcome.payout_holds}
        assert held and all(v >= 5000 and balances[k] == v for k, v in held.items())
        # carried: under the minimum; negative where a refund clawed back what the platform paid before
        carried = {k: v for k, v in balances.items() if v > 0 and k not in held}
        owing = {k: v for k, v in balances.items() if v < 0}
        assert carried and all(v < 5000 for v in carried.values())
        # nothing new and the same minimum: nothing to pay; a lower minimum pays what was carried
        assert settlement.settle(conn, Params(minimum_payout_cents=5000), run_key="run-2").payouts == []
        lower = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-3")
        carried_unheld = {k: v for k, v in carried.items()
                          if k not in {(h["contributor_id"], h["currency"]) for h in lower.payout_holds}}
        assert {(p["contributor_id"], p["currency"]): p["amount_minor"] for p in lower.payouts} == carried_unheld
        assert {k: v for k, v in settlement.balances(conn).items() if v} == \
            owing | {(h["contributor_id"], h["currency"]): h["balance_minor"] for h in lower.payout_holds}


def test_refunds_after_payout_claw_back_exactly_and_a_negative_balance_is_carried(platform_db):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1")  # pay everything out
        license_id, pi, price = conn.execute(
            "SELECT l.id::text, l.payment_intent_id, l.price FROM licenses l WHERE l.payment_status = 'completed' "
            "AND l.generation_id IS NOT NULL AND cardinality((SELECT source_samples FROM generations g "
            "WHERE g.id = l.generation_id)) >= 2 AND NOT EXISTS (SELECT 1 FROM refunds r "
            "WHERE r.payment_intent_id = l.payment_intent_id) ORDER BY l.price DESC LIMIT 1").fetchone()
        currency = conn.execute("SELECT currency FROM payment_intents WHERE id = %s", (pi,)).fetchone()[0]
        price_minor = to_minor(price, currency)
        part_minor = price_minor // 3
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status, created_at) VALUES "
                     "('re_test_1', %s, %s, %s, 'partial', 'succeeded', now())",
                     (pi, float(from_minor(part_minor, currency)), currency))
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status, created_at) VALUES "
                     "('re_test_2', %s, %s, %s, 'rest', 'succeeded', now() + interval '1 minute')",
                     (pi, float(from_minor(price_minor - part_minor, currency)), currency))
        conn.execute("UPDATE licenses SET payment_status = 'refunded' WHERE id = %s", (license_id,))
        parts = posted_parts(conn)[license_id]
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-2")
        assert outcome.clawbacks["refunds"] == 2
        clawed = defaultdict(int)
        for party, amount in conn.execute(
                "SELECT coalesce(a.contributor_id::text, a.kind), p.amount_minor FROM csl_ops.postings p "
                "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
                "WHERE p.kind = 'clawback' AND p.source_id LIKE 're_test_%'").fetchall():
            if party not in ("platform_revenue", "clearing"):
                clawed[party] += amount
        assert dict(clawed) == parts, "a full refund in two pieces reverses every part exactly"
        balances = settlement.balances(conn)
        for contributor in parts:
            assert balances[(contributor, currency)] <= 0  # paid out before: now owes it back, carried
        assert not any(p["contributor_id"] in parts for p in outcome.payouts)


def test_corrupted_input_is_a_finding_and_the_gate_stops_everything(platform_db):
    with connect(platform_db) as conn:
        bad_price = conn.execute("UPDATE licenses SET price = 10.005 WHERE id = (SELECT id FROM licenses "
                                 "WHERE payment_status = 'completed' ORDER BY id LIMIT 1) RETURNING id::text").fetchone()[0]
        bad_split = conn.execute("UPDATE revenue_splits SET amount = amount + 0.01 WHERE id = (SELECT id FROM "
                                 "revenue_splits ORDER BY id LIMIT 1) RETURNING license_id::text").fetchone()[0]
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-bad")
        kinds = {(f["kind"], f["license_id"]) for f in caught.value.outcome.findings}
        assert ("sub_unit_price", bad_price) in kinds and ("split_mismatch", bad_split) in kinds
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
        assert outcome.status == "committed" and outcome.held == 0
        runs = dict(conn.execute("SELECT run_key, status FROM csl_ops.settlement_runs").fetchall())
        assert runs == {"nightly": "committed", "nightly#dry_run": "gate_failed"}


def test_a_licence_without_any_contributor_is_held_not_given_to_the_platform(platform_db):
    with connect(platform_db) as conn:
        orphan = conn.execute(
            "UPDATE generations SET source_samples = '{}' WHERE id = (SELECT generation_id FROM licenses "
            "WHERE payment_status = 'completed' AND generation_id IS NOT NULL ORDER BY id LIMIT 1) RETURNING id").fetchone()[0]
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-1")
        held = {f["kind"] for f in caught.value.outcome.findings}
        assert held == {"unknown_source_samples"}, held
        assert conn.execute("SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0] == 0
        assert orphan


def test_a_refund_on_an_intent_shared_by_two_licences_is_held(platform_db):
    with connect(platform_db) as conn:
        first, second = conn.execute(
            "SELECT id, payment_intent_id FROM licenses WHERE payment_status = 'completed' AND payment_intent_id NOT IN "
            "(SELECT payment_intent_id FROM refunds) ORDER BY id LIMIT 2").fetchall()
        conn.execute("UPDATE licenses SET payment_intent_id = %s WHERE id = %s", (first[1], second[0]))
        # one payment for both licences: its amount covers both prices, in one currency
        conn.execute("UPDATE payment_intents SET currency = (SELECT currency FROM payment_intents WHERE id = %s) "
                     "WHERE id = %s", (first[1], second[1]))
        conn.execute("UPDATE payment_intents SET amount = (SELECT sum(price) FROM licenses WHERE payment_intent_id = %s) "
                     "WHERE id = %s", (first[1], first[1]))
        settlement.settle(conn, Params(), run_key="run-1")
        currency = conn.execute("SELECT currency FROM payment_intents WHERE id = %s", (first[1],)).fetchone()[0]
        conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status) VALUES "
                     "('re_shared', %s, 1.00, %s, 'partial', 'succeeded')", (first[1], currency))
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-2")
        assert {f["kind"] for f in caught.value.outcome.findings} == {"refund_ambiguous_licence"}
        assert conn.execute("SELECT count(*) FROM csl_ops.postings WHERE kind = 'clawback' AND source_id = 're_shared'"
                            ).fetchone()[0] == 0


def test_dry_run_commits_nothing(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(dry_run=True), run_key="dry")
        splits_before = conn.execute("SELECT count(*) FROM revenue_splits").fetchone()[0]
        outcome = settlement.settle(conn, Params(dry_run=True), run_key="dry-2")
        assert outcome.status == "dry_run" and outcome.licences > 0 and outcome.gate["success"]
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
        assert sum(r.licences for r in results) == conn.execute(
            "SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM (SELECT license_id, account_id FROM csl_ops.postings WHERE kind = 'sale' "
                            "AND license_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM csl_ops.journal_entries WHERE kind = 'sale'").fetchone()[0] == \
            conn.execute("SELECT count(DISTINCT currency) FROM csl_ops.settled_licences").fetchone()[0]


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
            assert outcome.status == "committed"
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


def test_a_run_s_statement_file_is_written_where_statement_path_says(platform_db, tmp_path):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-1")
        path = settlement.statement_path(tmp_path / "reports", "scheduled__2026-12-01T03:00:00+00:00")
        rows = settlement.write_statement_file(conn, path)  # its folder does not exist yet
    assert path.parent == tmp_path / "reports" / "settlement" and path.is_file()
    assert rows > 0 and len(path.read_text().splitlines()) == rows + 1  # and the header


# -- sending payouts (Stripe's transfer API shape, at the HTTP layer) ---------------------------
API_KEY = "sk_test_csl"


class FakeStripe:
    """Stripe's transfer endpoints as far as payouts use them, in memory.

    ``GET /v1/balance`` (the key check), ``POST /v1/transfers`` (form-encoded; idempotent: a
    repeated ``Idempotency-Key`` gets the saved first answer, a 429 is not saved; a destination
    that is not one of ``accounts`` is refused as Stripe does, ``resource_missing``) and ``GET
    /v1/transfers`` (a list filtered by ``transfer_group`` and ``destination``, newest first, paged
    by ``limit``/``starting_after``). ``refuse``, ``rate_limit`` and ``lose_answer`` name idempotency
    keys: refused (400), rate limited (429), or the transfer made but its answer lost (the client
    sees a timeout); ``scripted`` maps a key to a raw answer (status, body text) given instead, the
    transfer made or not as ``scripted_made`` says. Used over ``httpx.MockTransport`` here and
    behind a real HTTP server in the e2e test.
    """

    def __init__(self, *, accounts=(), refuse=(), rate_limit=(), lose_answer=(), scripted=None, scripted_made=()):
        self.accounts = set(accounts)
        self.refuse, self.rate_limit, self.lose_answer = set(refuse), set(rate_limit), set(lose_answer)
        self.scripted, self.scripted_made = dict(scripted or {}), set(scripted_made)
        self.transfers: list[dict] = []
        self.saved: dict[str, tuple[int, dict]] = {}
        self.requests: list[tuple[str, str, dict, dict]] = []  # (method, path, form or query, headers)
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, params: dict, headers) -> tuple[int, dict | str]:
        with self.lock:
            self.requests.append((method, path, params, dict(headers)))
            if headers.get("authorization") != f"Bearer {API_KEY}":
                return 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}
            if (method, path) == ("GET", "/v1/balance"):
                return 200, {"object": "balance", "available": [{"amount": 10**9, "currency": "usd"}]}
            if path != "/v1/transfers":
                return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL {path}"}}
            if method == "GET":
                return 200, self._list(params)
            key = headers.get("idempotency-key")
            if key in self.scripted:
                if key in self.scripted_made and key not in self.saved:  # made: a resend gets this transfer
                    self.saved[key] = 200, self._make(params)
                return self.scripted[key]
            if key in self.saved:
                return self.saved[key]
            if key in self.rate_limit:
                return 429, {"error": {"type": "rate_limit_error", "message": "Too many requests hit the API too quickly."}}
            if key in self.refuse:
                answer = 400, {"error": {"type": "invalid_request_error", "code": "account_invalid",
                                         "message": "The destination account is not connected to your platform."}}
            elif params.get("destination") not in self.accounts:
                answer = 400, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                         "param": "destination",
                                         "message": f"No such destination: '{params.get('destination')}'"}}
            else:
                answer = 200, self._make(params)
            self.saved[key] = answer
            return answer

    def _make(self, params: dict) -> dict:
        transfer = {"id": f"tr_{len(self.transfers) + 1:08d}", "object": "transfer", "amount": int(params["amount"]),
                    "currency": params["currency"], "destination": params["destination"],
                    "transfer_group": params.get("transfer_group"), "reversed": False, "created": int(time.time()),
                    "metadata": {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}}
        self.transfers.append(transfer)
        return transfer

    def _list(self, query: dict) -> dict:
        found = [t for t in reversed(self.transfers)
                 if t["transfer_group"] == query.get("transfer_group", t["transfer_group"])
                 and t["destination"] == query.get("destination", t["destination"])]
        if "starting_after" in query:
            found = found[[t["id"] for t in found].index(query["starting_after"]) + 1:]
        limit = int(query.get("limit", 10))
        return {"object": "list", "url": "/v1/transfers", "has_more": len(found) > limit, "data": found[:limit]}

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            params = dict(httpx.QueryParams(request.content.decode())) if request.method == "POST" \
                else dict(request.url.params)
            status, body = self.handle(request.method, request.url.path, params, request.headers)
            if request.method == "POST" and request.headers.get("Idempotency-Key") in self.lose_answer:
                raise httpx.ReadTimeout("the answer never arrived", request=request)
            return httpx.Response(status, text=body) if isinstance(body, str) else httpx.Response(status, json=body)

        return httpx.MockTransport(handler)

    def posts(self) -> list[dict]:
        return [dict(params, idempotency_key=headers.get("idempotency-key"))
                for method, path, params, headers in self.requests if method == "POST"]


def verified_accounts(conn) -> set[str]:
    """The connected accounts the platform verified: the ones a real provider would accept."""
    return {r[0] for r in conn.execute("SELECT account_id FROM csl_ops.payout_accounts WHERE verified_at IS NOT NULL "
                                       "AND disabled_at IS NULL").fetchall()}


def stripe_of(conn, **kwargs) -> FakeStripe:
    return FakeStripe(accounts=verified_accounts(conn), **kwargs)


def sender_for(stripe: FakeStripe, **kwargs) -> settlement.PayoutSender:
    return settlement.PayoutSender(endpoint="https://api.stripe.test", api_key=kwargs.pop("api_key", API_KEY),
                                   transport=stripe.transport(), **kwargs)


def payout_rows(conn):
    return {(c, cur): (status, transfer, attempts) for c, cur, status, transfer, attempts in conn.execute(
        "SELECT contributor_id::text, currency, status, transfer_id, attempts FROM csl_ops.payouts").fetchall()}


def paid_splits(conn):
    return set(conn.execute("SELECT license_id::text, contributor_id::text FROM revenue_splits "
                            "WHERE status = 'paid' AND payment_date > now() - interval '1 hour'").fetchall())


def covered(conn, statuses):
    return set(conn.execute(
        "SELECT pl.license_id::text, pl.contributor_id::text FROM csl_ops.payout_licences pl "
        "JOIN csl_ops.payouts po ON po.id = pl.payout_id JOIN revenue_splits rs ON rs.license_id = pl.license_id "
        "AND rs.contributor_id = pl.contributor_id WHERE po.status = ANY(%s)", (list(statuses),)).fetchall())


def test_payouts_are_sent_with_idempotency_keys_and_their_outcomes_applied(platform_db):
    with connect(platform_db) as conn:
        # the platform's own old 'paid' marks are not ours to judge here: start from pending splits
        conn.execute("UPDATE revenue_splits SET status = 'pending', payment_date = NULL")
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1")
        payouts = outcome.payouts
        assert len(payouts) >= 3 and all(p["licences"] > 0 for p in payouts)
        refused, limited = (payouts[0]["contributor_id"], payouts[0]["currency"]), \
            (payouts[1]["contributor_id"], payouts[1]["currency"])
        stripe = stripe_of(conn, refuse=[payouts[0]["idempotency_key"]], rate_limit=[payouts[1]["idempotency_key"]])
        sender = sender_for(stripe)
        result = sender.send(conn)
        assert (result.confirmed, result.failed, result.retry_later) == (len(payouts) - 2, 1, 1)
        posts = stripe.posts()
        assert [p["idempotency_key"] for p in posts] == [p["idempotency_key"] for p in payouts]
        assert [(int(p["amount"]), p["currency"]) for p in posts] == [(p["amount_minor"], p["currency"]) for p in payouts]
        rows = payout_rows(conn)
        assert rows[refused][0] == "failed" and rows[limited][0] == "sent"  # unknown outcome: sent, not instructed
        assert {s for k, (s, _, _) in rows.items() if k not in (refused, limited)} == {"confirmed"}
        assert {t for k, (_, t, _) in rows.items() if k not in (refused, limited)} == {t["id"] for t in stripe.transfers}
        # refused: the money is back on the contributor's balance, carried to the next run
        assert settlement.balances(conn)[refused] == payouts[0]["amount_minor"]
        # exactly the licences the confirmed payouts cover are paid, nothing else
        assert paid_splits(conn) == covered(conn, ["confirmed"]) != set()
        # a second send repeats only the rate-limited one, with the same idempotency key
        stripe.rate_limit.clear()
        stripe.requests.clear()
        again = sender.send(conn)
        assert [p["idempotency_key"] for p in stripe.posts()] == [payouts[1]["idempotency_key"]]
        assert again.confirmed == 1 and payout_rows(conn)[limited][:1] == ("confirmed",)
        assert paid_splits(conn) == covered(conn, ["confirmed"])
        # the refused payout's licences are released: the next run's payout covers them again
        refused_licences = {lic for lic, c in covered(conn, ["failed"]) if c == refused[0]}
        run2 = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2")
        assert [(p["contributor_id"], p["currency"], p["amount_minor"]) for p in run2.payouts] == \
            [(*refused, payouts[0]["amount_minor"])]
        assert {lic for lic, c in covered(conn, ["instructed"]) if c == refused[0]} == refused_licences
        sender.close()


def sell(conn, contributor, currency, price):
    """A new completed direct licence of one of the contributor's samples, on its own payment intent."""
    pi = f"pi_test_{uuid.uuid4().hex[:16]}"
    conn.execute("INSERT INTO payment_intents (id, user_id, amount, currency, status) SELECT %s, user_id, %s, %s, "
                 "'succeeded' FROM licenses LIMIT 1", (pi, price, currency))
    return conn.execute(
        "INSERT INTO licenses (user_id, audio_sample_id, license_type, price, payment_status, payment_intent_id) "
        "SELECT l.user_id, s.id, l.license_type, %s, 'completed', %s FROM audio_samples s "
        "CROSS JOIN (SELECT user_id, license_type FROM licenses LIMIT 1) l WHERE s.contributor_id = %s LIMIT 1 "
        "RETURNING id::text", (price, pi, contributor)).fetchone()[0]


def test_a_payout_marks_paid_exactly_the_licences_it_covers(platform_db):
    """Two payouts to one contributor; only the later is confirmed: only its licence is paid."""
    with connect(platform_db) as conn:
        conn.execute("UPDATE revenue_splits SET status = 'pending', payment_date = NULL")
        first = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1").payouts[0]
        contributor, currency = first["contributor_id"], first["currency"]
        new_licence = sell(conn, contributor, currency, 25.0)
        second = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-2").payouts
        assert [(p["contributor_id"], p["currency"], p["amount_minor"], p["licences"]) for p in second] == \
            [(contributor, currency, 1750, 1)]
        stripe = stripe_of(conn, rate_limit=[first["idempotency_key"]])  # the first payout's answer is not in yet
        sender = sender_for(stripe)
        sender.send(conn)
        rows = {k: s for k, s in conn.execute("SELECT idempotency_key, status FROM csl_ops.payouts").fetchall()}
        assert rows[first["idempotency_key"]] == "sent" and rows[second[0]["idempotency_key"]] == "confirmed"
        first_licences = {r[0] for r in conn.execute(
            "SELECT pl.license_id::text FROM csl_ops.payout_licences pl JOIN csl_ops.payouts po ON po.id = pl.payout_id "
            "WHERE po.idempotency_key = %s", (first["idempotency_key"],)).fetchall()}
        paid = {lic for lic, c in paid_splits(conn) if c == contributor}
        assert first_licences and new_licence in paid and not first_licences & paid
        assert paid_splits(conn) == covered(conn, ["confirmed"])
        sender.close()


def test_sent_is_committed_before_the_call_and_a_lost_answer_is_never_paid_twice(platform_db):
    with connect(platform_db) as conn, connect(platform_db) as watcher:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        lost = payouts[0]["contributor_id"]
        stripe = stripe_of(conn, lose_answer=[payouts[0]["idempotency_key"]])
        seen_status = {}
        transport = stripe.transport()

        def watching(request: httpx.Request) -> httpx.Response:
            key = request.headers.get("Idempotency-Key")
            if key:  # what another session (a restarted worker) sees while the call is in flight
                seen_status[key] = watcher.execute("SELECT status, attempts FROM csl_ops.payouts "
                                                   "WHERE idempotency_key = %s", (key,)).fetchone()
            return transport.handle_request(request)

        sender = settlement.PayoutSender(endpoint="https://api.stripe.test", api_key=API_KEY,
                                         transport=httpx.MockTransport(watching))
        result = sender.send(conn)
        assert set(seen_status.values()) == {("sent", 1)}
        assert result.retry_later == 1 and payout_rows(conn)[(lost, payouts[0]["currency"])][0] == "sent"
        # within the idempotency window the same key is sent again: Stripe answers with the first transfer
        stripe.lose_answer.clear()
        assert sender.send(conn).confirmed == 1
        made = [t for t in stripe.transfers if t["metadata"]["idempotency_key"] == payouts[0]["idempotency_key"]]
        assert len(made) == 1 and payout_rows(conn)[(lost, payouts[0]["currency"])][:2] == ("confirmed", made[0]["id"])
        sender.close()


def test_past_the_idempotency_window_an_unknown_payout_is_looked_up_never_resent(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        made_it, never_arrived = payouts[0], payouts[1]
        stripe = stripe_of(conn, lose_answer=[made_it["idempotency_key"]], rate_limit=[never_arrived["idempotency_key"]])
        sender = sender_for(stripe)
        sender.send(conn)
        group = stripe.transfers[0]["transfer_group"]
        for i in range(250):  # later transfers of the same group to the same account: the lookup must page
            stripe.transfers.append({"id": f"tr_later_{i}", "object": "transfer", "amount": 100, "reversed": False,
                                     "currency": made_it["currency"], "destination": stripe.transfers[0]["destination"],
                                     "transfer_group": group, "metadata": {}})
        keys = (made_it["idempotency_key"], never_arrived["idempotency_key"])
        conn.execute("UPDATE csl_ops.payouts SET first_sent_at = now() - interval '25 hours' "
                     "WHERE idempotency_key = ANY(%s)", (list(keys),))
        conn.execute("UPDATE csl_ops.payouts SET status = 'confirmed' WHERE NOT idempotency_key = ANY(%s)", (list(keys),))
        stripe.requests.clear()
        stripe.lose_answer.clear()
        stripe.rate_limit.clear()
        result = sender.send(conn)
        assert stripe.posts() == [], "nothing is sent again past the window"
        assert (result.looked_up, result.confirmed, result.needs_review) == (2, 1, 1)
        transfer = next(t for t in stripe.transfers if t["metadata"].get("idempotency_key") == made_it["idempotency_key"])
        rows = payout_rows(conn)
        assert rows[(made_it["contributor_id"], made_it["currency"])][:2] == ("confirmed", transfer["id"])
        assert rows[(never_arrived["contributor_id"], never_arrived["currency"])][0] == "needs_review"
        error = conn.execute("SELECT error FROM csl_ops.payouts WHERE idempotency_key = %s", (keys[1],)).fetchone()[0]
        assert "no transfer found" in error and "review" in error
        assert sender.send(conn).needs_review == 0 and stripe.posts() == []  # left for a person
        sender.close()


# -- the gate judges payouts and clawbacks; refunds convert like prices --------------------------
def refundable_licence(conn, *, generation=False, min_price=1.0):
    """A settled, completed licence whose payment intent pays only it and has no refund yet."""
    return conn.execute(
        "SELECT l.id::text, l.payment_intent_id, l.price, lower(pi.currency) FROM licenses l "
        "JOIN payment_intents pi ON pi.id = l.payment_intent_id "
        "JOIN csl_ops.settled_licences sl ON sl.license_id = l.id "
        "WHERE l.payment_status = 'completed' AND l.price >= %s AND (l.generation_id IS NOT NULL) = %s "
        "AND (NOT %s OR cardinality((SELECT source_samples FROM generations g WHERE g.id = l.generation_id)) >= 2) "
        "AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_intent_id = l.payment_intent_id) "
        "AND (SELECT count(*) FROM licenses l2 WHERE l2.payment_intent_id = l.payment_intent_id) = 1 "
        "ORDER BY l.price DESC, l.id LIMIT 1", (min_price, generation, generation)).fetchone()


def refund(conn, refund_id, payment_intent, amount, currency):
    conn.execute("INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, status) "
                 "VALUES (%s, %s, %s, %s, 'test', 'succeeded')", (refund_id, payment_intent, amount, currency))


def test_refunds_convert_like_prices_float_noise_is_not_a_sub_cent(platform_db):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(), run_key="run-1")
        license_id, pi, _, currency = refundable_licence(conn)
        refund(conn, "re_noise", pi, 0.1 + 0.2, currency)  # 0.30000000000000004: float noise, 30 cents
        outcome = settlement.settle(conn, Params(), run_key="run-2")
        assert outcome.clawbacks["refunds"] == 1
        assert conn.execute("SELECT p.amount_minor FROM csl_ops.postings p JOIN csl_ops.ledger_accounts a "
                            "ON a.id = p.account_id AND a.kind = 'clearing' "
                            "WHERE p.kind = 'clawback' AND p.source_id = 're_noise'").fetchone()[0] == -30
        license_id, pi, _, currency = refundable_licence(conn, min_price=10.01)
        refund(conn, "re_half_cent", pi, 10.005, currency)  # a real half cent: held, never rounded
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-3")
        assert [(f["kind"], f["license_id"]) for f in caught.value.outcome.findings] == \
            [("refund_sub_unit", license_id)]
        assert conn.execute("SELECT count(*) FROM csl_ops.postings WHERE kind = 'clawback' AND source_id = 're_half_cent'"
                            ).fetchone()[0] == 0


def test_the_gate_checks_clawbacks_against_the_refunded_share_not_only_their_balance(platform_db):
    """An earlier clawback that took more than a contributor's part (balanced, so no entry check
    sees it) fails the gate as soon as the licence is refunded again."""
    with connect(platform_db) as conn:
        run_id = settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-1").run_id
        license_id, pi, price, currency = refundable_licence(conn, generation=True)
        contributor, part = min(posted_parts(conn)[license_id].items())
        entry = conn.execute("INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo) VALUES "
                             "(%s, 'clawback', %s, 'a buggy earlier clawback') RETURNING id", (run_id, currency)).fetchone()[0]
        conn.execute(
            "INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, source_id, kind) "
            "SELECT %s, a.id, CASE a.kind WHEN 'platform_revenue' THEN -%s ELSE %s END, %s, 're_bug', 'clawback' "
            "FROM csl_ops.ledger_accounts a "
            "WHERE a.currency = %s AND (a.kind = 'platform_revenue' OR (a.kind = 'contributor_payable' "
            "AND a.contributor_id = %s))", (entry, part + 1, part + 1, license_id, currency, contributor))
        postings_before = conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0]
        refund(conn, "re_partial", pi, round(price / 4, 2), currency)
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-2")
        violations = {c["check"]: c["violations"] for c in caught.value.outcome.gate["checks"]}
        assert violations["clawbacks_within_allocation"] >= 1 and violations["clawbacks_proportional"] >= 1
        assert violations["entries_balance"] == 0 and violations["findings"] == 0
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == postings_before
        assert conn.execute("SELECT count(*) FROM csl_ops.payouts").fetchone()[0] == 0


def test_the_gate_judges_the_payouts_and_a_wrong_one_stops_the_run(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(), run_key="run-1")
        assert outcome.payouts and outcome.gate["payouts"] == len(outcome.payouts)
        assert {v["asset"] for v in outcome.gate["validation"]} == {"checks", "entries", "payouts"}
        # a bug in the payout step (simulated: every instruction one cent over the balance)
        sell(conn, outcome.payouts[0]["contributor_id"], outcome.payouts[0]["currency"], 99.0)
        conn.execute("CREATE FUNCTION pg_temp.one_cent_more() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN NEW.amount_minor := NEW.amount_minor + 1; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER one_cent_more BEFORE INSERT ON csl_ops.payouts FOR EACH ROW "
                     "EXECUTE FUNCTION pg_temp.one_cent_more()")
        payouts_before = conn.execute("SELECT count(*) FROM csl_ops.payouts").fetchone()[0]
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-2")
        violations = {c["check"]: c["violations"] for c in caught.value.outcome.gate["checks"]}
        assert violations["payouts_clear_balances"] == 1 and caught.value.outcome.payouts == []
        assert conn.execute("SELECT count(*) FROM csl_ops.payouts").fetchone()[0] == payouts_before


def test_splits_the_platform_already_paid_are_recorded_as_paid_and_never_paid_again(platform_db):
    with connect(platform_db) as conn:
        before = dict(conn.execute(
            "SELECT rs.license_id::text || ':' || rs.contributor_id, rs.payment_date FROM revenue_splits rs "
            "WHERE rs.status = 'paid'").fetchall())
        assert before, "the seed has platform splits already marked paid"
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1")
        assert outcome.status == "committed" and outcome.splits_paid_before > 0
        prepaid = dict(conn.execute(
            "SELECT p.license_id::text || ':' || a.contributor_id, p.amount_minor FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
            "WHERE p.kind = 'prepaid' AND p.license_id IS NOT NULL").fetchall())
        sales = dict(conn.execute(
            "SELECT p.license_id::text || ':' || a.contributor_id, -p.amount_minor FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
            "WHERE p.kind = 'sale' AND p.license_id IS NOT NULL").fetchall())
        settled_paid = {k for k in before if k in sales}
        # every settled split the platform had paid: its payment is on the ledger, at the sale's amount
        assert set(prepaid) == settled_paid and all(prepaid[k] == sales[k] for k in prepaid)
        assert len({k.split(":")[0] for k in prepaid}) == outcome.splits_paid_before
        # no payout covers them, so sending can never pay them twice
        covered_keys = {f"{lic}:{c}" for lic, c in conn.execute(
            "SELECT license_id::text, contributor_id::text FROM csl_ops.payout_licences").fetchall()}
        assert covered_keys and not (covered_keys & set(prepaid))
        # payouts pay what the ledger owes: sales minus what was paid before minus clawbacks
        owed = dict(conn.execute(
            "SELECT a.contributor_id::text || ':' || a.currency, -sum(p.amount_minor) FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'contributor_payable' "
            "JOIN csl_ops.journal_entries e ON e.id = p.entry_id "
            "WHERE p.kind <> 'payout' GROUP BY 1").fetchall())
        paid_now = {f"{p['contributor_id']}:{p['currency']}": p["amount_minor"] for p in outcome.payouts}
        assert paid_now and all(owed[k] == v for k, v in paid_now.items())
        # and the platform's own rows keep their payment dates
        after = dict(conn.execute(
            "SELECT rs.license_id::text || ':' || rs.contributor_id, rs.payment_date FROM revenue_splits rs "
            "WHERE rs.status = 'paid'").fetchall())
        assert {k: after[k] for k in before} == before


# -- the ledger's guarantees without per-row foreign keys; one snapshot per run; review ------------
def test_the_ledger_is_append_only(platform_db):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(), run_key="run-1")
        fingerprint = settlement.ledger_fingerprint(conn)
        for change in (("UPDATE csl_ops.postings SET amount_minor = amount_minor + 1 WHERE id = "
                       "(SELECT min(id) FROM csl_ops.postings)"),
                       "DELETE FROM csl_ops.journal_entries WHERE id = (SELECT max(id) FROM csl_ops.journal_entries)",
                       "UPDATE csl_ops.ledger_accounts SET currency = 'xxx'",
                       "TRUNCATE csl_ops.settled_licences",
                       "DELETE FROM csl_ops.payouts"):
            with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                conn.execute(change)
        assert settlement.ledger_fingerprint(conn) == fingerprint


def test_a_posting_naming_a_missing_account_fails_the_gate(platform_db):
    """Postings carry no per-row foreign keys: the gate checks every posting the run wrote."""
    with connect(platform_db) as conn:
        victim = conn.execute("SELECT id::text FROM licenses WHERE payment_status = 'completed' "
                              "AND audio_sample_id IS NOT NULL ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("CREATE FUNCTION pg_temp.lose_account() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     f"IF NEW.kind = 'sale' AND NEW.license_id = '{victim}' THEN NEW.account_id := -1; END IF; "
                     "RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER lose_account BEFORE INSERT ON csl_ops.postings FOR EACH ROW "
                     "EXECUTE FUNCTION pg_temp.lose_account()")
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-1")
        violations = {c["check"]: c["violations"] for c in caught.value.outcome.gate["checks"]}
        assert violations["postings_reference_entries_and_accounts"] == 1
        assert violations["entries_balance"] == 0  # the amounts still balance: only the reference is wrong
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == 0


def test_a_licence_completed_during_a_run_is_left_for_the_next_run(platform_db, monkeypatch):
    """The run reads one snapshot: a sale completed while it runs neither fails its gate nor is
    half-settled; the next run settles it."""
    with connect(platform_db) as conn:
        late = conn.execute("SELECT l.id::text FROM licenses l JOIN payment_intents pi ON pi.id = l.payment_intent_id "
                            "WHERE l.payment_status = 'pending' AND l.audio_sample_id IS NOT NULL "
                            "ORDER BY l.id LIMIT 1").fetchone()[0]
        real_gate = settlement_run.run_gate

        def gate_after_a_late_sale(run_conn, values):
            with connect(platform_db) as platform, platform.transaction():  # the payment arrives: intent and licence
                platform.execute("UPDATE payment_intents SET status = 'succeeded' WHERE id = "
                                 "(SELECT payment_intent_id FROM licenses WHERE id = %s)", (late,))
                platform.execute("UPDATE licenses SET payment_status = 'completed' WHERE id = %s", (late,))
            return real_gate(run_conn, values)

        monkeypatch.setattr(settlement_run, "run_gate", gate_after_a_late_sale)
        outcome = settlement.settle(conn, Params(), run_key="run-1")
        assert outcome.status == "committed" and outcome.gate["success"]
        settled = "SELECT count(*) FROM csl_ops.settled_licences WHERE license_id = %s"
        assert conn.execute(settled, (late,)).fetchone()[0] == 0
        monkeypatch.setattr(settlement_run, "run_gate", real_gate)
        again = settlement.settle(conn, Params(), run_key="run-2")
        assert again.licences == 1 and conn.execute(settled, (late,)).fetchone()[0] == 1


def test_a_payout_needing_review_is_resolved_by_a_person_never_resent_blindly(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        found, lost = payouts[0], payouts[1]
        ids = dict(conn.execute("SELECT idempotency_key, id FROM csl_ops.payouts WHERE idempotency_key = ANY(%s)",
                                ([found["idempotency_key"], lost["idempotency_key"]],)).fetchall())
        conn.execute("UPDATE csl_ops.payouts SET status = 'needs_review', attempts = 1, "
                     "first_sent_at = now() - interval '2 days', last_sent_at = now() - interval '2 days' "
                     "WHERE id = ANY(%s)", (list(ids.values()),))
        found_id, lost_id = ids[found["idempotency_key"]], ids[lost["idempotency_key"]]
        with pytest.raises(SettlementParamsError, match="exactly one"):
            settlement.review_payout(conn, found_id)
        with pytest.raises(SettlementParamsError, match="not a transfer id"):
            settlement.review_payout(conn, found_id, transfer_id="12345")
        # the transfer was found in the provider's dashboard: confirmed, its licences paid
        assert settlement.review_payout(conn, found_id, transfer_id="tr_found1").status == "confirmed"
        assert conn.execute("SELECT status, transfer_id FROM csl_ops.payouts WHERE id = %s",
                            (found_id,)).fetchone() == ("confirmed", "tr_found1")
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE rs.status = 'paid'), count(*) FROM csl_ops.payout_licences pl "
            "JOIN revenue_splits rs ON rs.license_id = pl.license_id AND rs.contributor_id = pl.contributor_id "
            "WHERE pl.payout_id = %s", (found_id,)).fetchone() == (found["licences"], found["licences"])
        # no transfer was made: the amount returns to the balance, the next run pays it under a new key
        key = (lost["contributor_id"], lost["currency"])
        assert settlement.balances(conn).get(key, 0) == 0
        settlement.review_payout(conn, lost_id, not_paid="no transfer in the dashboard")
        assert settlement.balances(conn)[key] == lost["amount_minor"]
        with pytest.raises(settlement.SettlementError, match="not 'needs_review'"):
            settlement.review_payout(conn, lost_id, not_paid="twice")
        again = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2").payouts
        anew = [p for p in again if (p["contributor_id"], p["currency"]) == key]
        assert len(anew) == 1 and anew[0]["amount_minor"] == lost["amount_minor"]
        assert anew[0]["idempotency_key"] != lost["idempotency_key"] and anew[0]["licences"] == lost["licences"]


def test_a_payout_refused_after_a_later_one_was_instructed_is_covered_again_by_the_next(platform_db):
    """Coverage is ranges of the account's postings: a refusal that arrives after the next payout
    was instructed leaves a gap, which the payout after adopts (never two payouts for one licence)."""
    def licences(conn, payout_key):
        return set(conn.execute("SELECT pl.license_id::text FROM csl_ops.payout_licences pl JOIN csl_ops.payouts po "
                                "ON po.id = pl.payout_id WHERE po.idempotency_key = %s", (payout_key,)).fetchall())

    with connect(platform_db) as conn:
        first = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts[0]
        key = (first["contributor_id"], first["currency"])
        first_licences = licences(conn, first["idempotency_key"])
        assert len(first_licences) == first["licences"] > 0
        for status in ("sent", "confirmed"):  # the payout state machine only moves forward
            conn.execute("UPDATE csl_ops.payouts SET status = %s, first_sent_at = now() WHERE idempotency_key <> %s",
                         (status, first["idempotency_key"]))
        late_sale = sell(conn, *key, 99.0)  # the first payout is still in flight when the next run pays this
        second = next(p for p in settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2").payouts
                      if (p["contributor_id"], p["currency"]) == key)
        assert licences(conn, second["idempotency_key"]) == {(late_sale,)}
        stripe = stripe_of(conn, refuse=[first["idempotency_key"]])
        sender = sender_for(stripe)
        result = sender.send(conn)
        assert (result.failed, result.confirmed) == (1, 1)
        third = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-3").payouts
        assert [(p["contributor_id"], p["currency"], p["amount_minor"]) for p in third] == [(*key, first["amount_minor"])]
        assert licences(conn, third[0]["idempotency_key"]) == first_licences
        assert sender.send(conn).confirmed == 1
        sender.close()
        paid = {lic for lic, c in paid_splits(conn) if c == key[0]}
        assert {lic for (lic,) in first_licences} | {late_sale} <= paid


def test_a_refusal_committed_during_a_run_is_paid_by_the_next_run(platform_db):
    """A refusal's reversal can take a posting id below a concurrent run's high-water mark and
    commit after its snapshot: the next run must not skip the payout scan because of the mark."""
    with connect(platform_db) as conn:
        refused = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts[0]
        stripe = stripe_of(conn, refuse=[refused["idempotency_key"]])
        sender = sender_for(stripe)
        assert sender.send(conn).failed == 1
        sender.close()
        # as if the reversal had been numbered below run-1's mark (it ran while run-1 was posting)
        conn.execute("UPDATE csl_ops.settlement_runs SET figures = jsonb_set(figures, '{ledger_high_water}', "
                     "to_jsonb((SELECT max(id) FROM csl_ops.postings))) WHERE run_key = 'run-1'")
        again = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2").payouts
        assert [(p["contributor_id"], p["currency"], p["amount_minor"]) for p in again] == \
            [(refused["contributor_id"], refused["currency"], refused["amount_minor"])]


def test_cli_review_payout(platform_db, stack_env):
    import json
    import os

    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull, "DATABASE_URL": platform_db}
    run = lambda *a: subprocess.run([sys.executable, "-m", "csl", "settlement", "review-payout", *a],
                                    capture_output=True, text=True, env=env, timeout=120, check=False)
    with connect(platform_db) as conn:
        payout = settlement.settle(conn, Params(), run_key="run-1").payouts[0]
        payout_id = conn.execute("UPDATE csl_ops.payouts SET status = 'needs_review', attempts = 1, "
                                 "first_sent_at = now() - interval '2 days' WHERE idempotency_key = %s RETURNING id",
                                 (payout["idempotency_key"],)).fetchone()[0]
    done = run("--payout", str(payout_id), "--not-paid", "no transfer in the dashboard", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "failed"
    again = run("--payout", str(payout_id), "--transfer", "tr_1")
    assert again.returncode == 1 and "not 'needs_review'" in again.stderr
    bad = run("--transfer", "tr_1")
    assert bad.returncode == 2 and "--payout" in bad.stderr
