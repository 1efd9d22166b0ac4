"""
### Revenue-split settlement: exact to the cent, exactly once, with a ledger

Daily. Royalties for cultural contributors from licence sales, in integer minor units, per
currency, into a double-entry ledger in `csl_ops` (rules: README, "Settlement rules").

1. **settle** — one REPEATABLE READ transaction (one snapshot) under an advisory lock (a second
   concurrent run waits `lock_wait_s`, then stops with a clear message): licences due (completed, not yet in the
   ledger) → exact allocation (largest remainder) → existing `revenue_splits` reused when they
   match, new ones written `pending` → postings in an append-only ledger (idempotent keys
   licence × kind × account) → clawbacks of refunds after settlement → payout instructions for balances at
   or over `minimum_payout_cents` (each with the licences it covers) → **data-quality gate**
   over all of it (Great Expectations: entries balance, allocations sum to the price, no due
   licence left, platform rows round-trip, no duplicates, no findings, payouts clear their
   balances, clawbacks equal the refunded share and never exceed what was allocated). A failed
   gate rolls the run back (no payout) and keeps its findings and validation
   (`csl_ops.settlement_runs`, `settlement_findings`, XCom `gate`/`findings`).
   `dry_run` computes and validates, commits nothing. Emits the Asset `csl_settlement_ledger`.
2. **send_payouts** — only with `send_payouts`: transfers through the `csl_payouts`
   connection (Stripe `POST /v1/transfers`, idempotency keys). Each payout is marked `sent`
   before its call; a confirmed one marks exactly the splits it covers `paid`; one whose
   outcome stayed unknown past the 24 h idempotency window is looked up (never resent) and,
   if no transfer is found, set to `needs_review` (a person resolves it with
   `python -m csl settlement review-payout`).
3. **statement** — per-contributor statement CSV (every posting, running balance).

Without Airflow: `python -m csl settlement run|statement|send-payouts|review-payout`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param

from csl_airflow.dags import csl_dag
from csl_airflow.params import PERIOD_BOUND, param
from csl_airflow.settlement import PayoutSendOperator, SettlementOperator, StatementOperator

# A name, not a scheme URI: any "scheme://" URI makes Airflow load every provider's URI
# normaliser at parse time (boto3 among them), on each parse of this file.
LEDGER = Asset(name="csl_settlement_ledger")
BOUND = ("an ISO date (midnight UTC) or date-time (UTC unless it gives an offset), "
         "e.g. 2026-11-01 or 2026-11-01T09:00+01:00")


@csl_dag(
    "csl_revenue_settlement",
    schedule="0 3 * * *",
    tags=["money", "settlement"],
    doc_md=__doc__,
    owner="csl-finance",
    retries=2,
    retry_delay=pendulum.duration(minutes=5),
    params={
        "period_start": Param(None, type=["null", "string"], pattern=PERIOD_BOUND,
                              description=f"Optional: only licences created at or after {BOUND}. Empty = no bound."),
        "period_end": Param(None, type=["null", "string"], pattern=PERIOD_BOUND,
                            description=f"Optional: only licences created before {BOUND}. Empty = no bound."),
        "contributor_share_bps": Param(7000, type="integer", minimum=0, maximum=10_000,
                                       description="Contributors' share of each price in basis points (7000 = 70 %)."),
        "minimum_payout_cents": Param(1000, type="integer", minimum=0, maximum=100_000_000,
                                      description="Balances below this (minor units) are carried, not paid."),
        "dry_run": Param(False, type="boolean", description="Compute and validate; commit nothing."),
        "send_payouts": Param(False, type="boolean",
                              description="Send payout instructions to the payout endpoint (csl_payouts connection)."),
    },
)
def csl_revenue_settlement():
    settle = SettlementOperator(
        task_id="settle", outlets=[LEDGER],
        share_bps=param("contributor_share_bps"), minimum_payout_cents=param("minimum_payout_cents"),
        period_start=param("period_start"), period_end=param("period_end"), dry_run=param("dry_run"),
    )
    payouts = PayoutSendOperator(task_id="send_payouts", send_payouts=param("send_payouts"), dry_run=param("dry_run"))
    statement = StatementOperator(task_id="statement")
    settle >> [payouts, statement]


csl_revenue_settlement()
