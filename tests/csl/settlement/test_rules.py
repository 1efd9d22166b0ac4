"""The settlement's rules the glue and the CLI used to write themselves (issue 13): the payout
endpoint from a connection, the statement file, the run's summary and record, when a payout send
is a failure (and which kind), when a run sends payouts. No database, no Airflow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from csl import settlement
from csl.config import reports_root
from csl.errors import ConfigError, ProblemFound, Transient
from csl.settlement import PayoutSendResult, SettlementOutcome


# -- the payout endpoint ---------------------------------------------------------------------
@pytest.mark.parametrize(("schema", "host", "port", "url"), [
    ("https", "api.stripe.com", None, "https://api.stripe.com"),
    (None, "api.stripe.com", None, "https://api.stripe.com"),  # no schema: https
    ("", "api.stripe.com", 8443, "https://api.stripe.com:8443"),
    ("http", "127.0.0.1", 8080, "http://127.0.0.1:8080"),
    ("http", "::1", 9, "http://[::1]:9"),
])
def test_the_endpoint_is_assembled_from_the_connection(schema, host, port, url):
    assert settlement.connection_endpoint(schema=schema, host=host, port=port) == url


@pytest.mark.parametrize(("schema", "host", "port", "problem"), [
    ("https", None, None, "expected an https://host[:port] URL"),  # not "https://None"
    ("https", "", 443, "expected an https://host[:port] URL"),
    ("http", "payments.example.com", None, "loopback"),
    ("ftp", "api.stripe.com", None, "expected an https://host[:port] URL"),
])
def test_a_connection_without_a_usable_endpoint_is_refused_naming_it(schema, host, port, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        settlement.connection_endpoint(schema=schema, host=host, port=port, setting="csl_payouts: payout endpoint")
    assert str(caught.value).startswith("csl_payouts: payout endpoint: ")


def test_the_cli_endpoint_is_checked_by_the_same_rule_naming_its_variable():
    with pytest.raises(ConfigError, match="loopback") as caught:
        settlement.payout_endpoint("http://payments.example.com", setting="CSL_PAYOUT_ENDPOINT")
    assert caught.value.setting == "CSL_PAYOUT_ENDPOINT"
    assert settlement.payout_endpoint("https://api.stripe.com/") == "https://api.stripe.com"


# -- the statement file ----------------------------------------------------------------------
def test_the_statement_goes_under_the_reports_root_named_by_a_safe_run_id(tmp_path):
    path = settlement.statement_path(tmp_path, "manual__2026-11-01T03:00:00+00:00")
    assert path == tmp_path / "settlement" / "statement_manual__2026-11-01T03_00_00_00_00.csv"
    escaped = settlement.statement_path(tmp_path, "../../etc/passwd")
    assert escaped.parent == tmp_path / "settlement" and "/" not in escaped.name
    assert escaped.name == "statement_.._.._etc_passwd.csv"


def test_the_reports_root_is_the_setting_else_airflow_home():
    assert reports_root({"CSL_REPORTS_DIR": "/srv/reports", "AIRFLOW_HOME": "/opt/airflow"}) == \
        Path("/srv/reports")
    assert reports_root({"AIRFLOW_HOME": "/opt/airflow"}) == Path("/opt/airflow/csl_reports")
    assert reports_root({"CSL_REPORTS_DIR": ""}) == Path("csl_reports")


# -- the run's figures -----------------------------------------------------------------------
def figures(**changes):
    base = {"run_id": 7, "run_key": "csl_revenue_settlement/manual__1", "due": 5, "licences": 4, "held": 1,
            "splits_reused": 2, "splits_paid_before": 1,
            "by_currency": {"usd": {"licences": 4, "gross_minor": 4000, "contributors_minor": 2800,
                                    "platform_minor": 1200}},
            "clawbacks": {"refunds": 1, "disputes": 0, "contributors_minor": 70},
            "findings": [{"kind": "sub_unit_price", "license_id": "l1", "detail": {}}],
            "gate": {"success": True, "checks": []},
            "payouts": [{"contributor_id": "c1", "currency": "usd", "amount_minor": 1500},
                        {"contributor_id": "c2", "currency": "usd", "amount_minor": 1300}],
            "payout_holds": [{"contributor_id": "c3", "currency": "usd", "balance_minor": 2000, "reason": "no_account"},
                             {"contributor_id": "c4", "currency": "usd", "balance_minor": 1000, "reason": "no_account"},
                             {"contributor_id": "c5", "currency": "eur", "balance_minor": 1000,
                              "reason": "duplicate_splits"}],
            "ledger_high_water": 99, "timings_s": {"due": 0.1}}
    return base | changes


def test_the_summary_counts_the_payouts_and_the_holds_by_reason():
    summary = SettlementOutcome.of(figures(), status="committed").summary()
    assert summary == {"status": "committed", "run_id": 7, "due": 5, "licences": 4, "held": 1, "splits_reused": 2,
                       "splits_paid_before": 1, "by_currency": figures()["by_currency"],
                       "clawbacks": figures()["clawbacks"], "timings_s": {"due": 0.1}, "payouts": 2,
                       "payout_minor": 2800, "payout_holds": {"no_account": 2, "duplicate_splits": 1}}


def test_as_dict_is_the_run_s_dict_and_the_record_leaves_out_findings_and_counts_payouts():
    committed = SettlementOutcome.of(figures(), status="committed")
    assert list(committed.as_dict()) == [*figures(), "status"] and committed.as_dict() == figures() | {
        "status": "committed"}
    record = committed.as_record()
    assert "findings" not in record and record["payouts"] == 2 and record["status"] == "committed"
    failed = SettlementOutcome.of({k: v for k, v in figures(payouts=[]).items() if k != "timings_s"},
                                  status="gate_failed")
    assert failed.as_dict() == {k: v for k, v in figures(payouts=[]).items() if k != "timings_s"}  # no status
    assert failed.as_record() == {k: v for k, v in failed.as_dict().items() if k != "findings"}
    stored = {k: v for k, v in figures().items() if k != "findings"} | {"findings_count": 1, "old_figure": 1}
    again = SettlementOutcome.of(stored, status="already committed", run_id=7)
    assert again.findings is None and again.as_dict() == {k: v for k, v in stored.items() if k != "old_figure"} | {
        "status": "already committed"}


# -- when a payout send is a failure ---------------------------------------------------------
def test_a_send_result_keeps_its_dict():
    result = PayoutSendResult(confirmed=3, failed=1, errors=[{"payout_id": 1, "outcome": "failed", "error": "x"}])
    assert list(result.as_dict()) == ["confirmed", "failed", "retry_later", "needs_review", "looked_up", "errors"]
    assert result.counts() == {"confirmed": 3, "failed": 1, "retry_later": 0, "needs_review": 0, "looked_up": 0}


@pytest.mark.parametrize("counts", [{"failed": 1}, {"needs_review": 1}, {"failed": 1, "retry_later": 2}])
def test_refused_payouts_or_payouts_to_review_need_a_person_and_are_not_retried(counts):
    result = PayoutSendResult(confirmed=2, **counts)
    assert not result.ok
    with pytest.raises(settlement.PayoutsNeedAttention, match="refused") as caught:
        result.raise_for_problems()
    assert isinstance(caught.value, ProblemFound) and not isinstance(caught.value, Transient)


def test_payouts_with_an_unknown_outcome_are_retried():
    result = PayoutSendResult(confirmed=2, retry_later=1, errors=[{"payout_id": 4, "outcome": "retry_later"}])
    assert not result.ok
    with pytest.raises(settlement.PayoutsUnsettled, match="same idempotency key") as caught:
        result.raise_for_problems()
    assert isinstance(caught.value, Transient)


def test_a_send_where_everything_went_through_is_no_failure():
    result = PayoutSendResult(confirmed=2, looked_up=1)
    assert result.ok
    result.raise_for_problems()


# -- when a run sends payouts ----------------------------------------------------------------
def test_payouts_are_sent_only_when_asked_and_not_in_a_dry_run():
    assert settlement.payouts_not_sent(send_payouts=True, dry_run=False) is None
    assert "send_payouts is false" in settlement.payouts_not_sent(send_payouts=False, dry_run=False)
    assert "send_payouts is false" in settlement.payouts_not_sent(send_payouts=False, dry_run=True)
    assert "dry_run" in settlement.payouts_not_sent(send_payouts=True, dry_run=True)
    for bad in ({"send_payouts": "false", "dry_run": False}, {"send_payouts": True, "dry_run": "true"}):
        with pytest.raises(settlement.SettlementParamsError, match="expected true or false"):
            settlement.payouts_not_sent(**bad)
