"""Revenue-split settlement: exact to the minor unit, exactly once, paid to the right account.

Rules (README, "Settlement rules"):

- Money is integer minor units end to end, by each currency's ISO 4217 exponent (``csl.money``:
  ¥1,000 is 1,000 minor units, 12.345 KWD is 12,345). Platform floats are converted by one rule
  (``csl_ops.minor_units`` in SQL, ``csl.money.to_minor`` here); a value with a real part below
  the minor unit, or a currency without an exponent, is a finding, never rounded or guessed.
  Each currency (from the payment intent) is settled on its own.
- A licence is due when its payment is ``completed``, its payment intent ``succeeded`` for an
  amount that covers every licence it pays, and it is not yet in the ledger. The contributor
  pool is ``share_bps`` of the price, rounded half up; a direct sample licence's pool goes to the
  sample's contributor, a generation licence's pool is divided among the contributors of its
  source samples, weighted by how many samples each contributed, by largest remainder (ties:
  lowest contributor id). The parts always sum exactly.
- Existing ``revenue_splits`` rows are reused when they match to the minor unit, otherwise the
  licence is held with a finding; new rows are written ``pending``, exact to the minor unit.
- Refunds and lost disputes (chargebacks) after settlement are clawed back in proportion to the
  cumulative reversed amount, exact to the minor unit; a balance may go negative and is carried.
- Every run holds an advisory lock and runs in one REPEATABLE READ transaction (one snapshot),
  with statement, lock and idle timeouts: allocate, post, claw back, audit the platform's splits,
  instruct payouts, then the data-quality gate over all of it; a failing gate rolls the run back
  (nothing half-written, no payout) and keeps its findings and validation result.
- The ledger is append-only; every posting has a composite idempotency key (licence × kind ×
  account, source × kind × account, or entry × account), so nothing can be posted twice.
- A payout pays a verified connected account from ``csl_ops.payout_accounts``, copied onto the
  payout when it is instructed (no account: a finding, the balance is carried). It records the
  licences it covers and moves only forward (a trigger). Sending marks it ``sent`` (committed)
  before the HTTP call; only a refusal the provider states fails it, anything ambiguous is an
  unknown outcome (the same key again, or a lookup past the idempotency window), and a payout
  whose licences the old platform paid meanwhile goes to ``needs_review`` before any money moves.

Modules: ``params`` (a run's parameters, parsed up front), ``arithmetic`` (allocation and
clawbacks in integer minor units), ``run`` (the one-transaction run), ``gate`` (the data-quality
gate), ``ledger`` (balances, fingerprint, statements and their files), ``payouts`` (the payout
state machine, the sender, when a run sends), ``provider`` (the payment provider's HTTP API and
its endpoint rule, apart from the state machine), ``results`` (what a run, a send and a review
return), ``errors``, ``cli`` (``python -m csl settlement …``).
"""

from csl.money import SubUnitAmount, to_minor
from csl.settlement.arithmetic import allocate, split_licence
from csl.settlement.errors import (
    GateFailed,
    PayoutProviderUnavailable,
    PayoutsNeedAttention,
    PayoutsUnsettled,
    SettlementBusy,
    SettlementError,
    SettlementParamsError,
    SettlementRace,
)
from csl.settlement.gate import GATE_CHECKS, run_gate
from csl.settlement.ledger import (
    balances,
    ledger_fingerprint,
    statement_path,
    write_statement,
    write_statement_file,
)
from csl.settlement.params import Params, parse_period
from csl.settlement.payouts import IDEMPOTENCY_WINDOW_S, PayoutSender, payouts_not_sent, review_payout
from csl.settlement.provider import (
    PaymentProvider,
    PayoutConfigError,
    classify_answer,
    connection_endpoint,
    payout_endpoint,
)
from csl.settlement.results import PayoutReview, PayoutSendResult, SettlementOutcome
from csl.settlement.run import LOCK_KEY, SPLITS_KEY_COLUMNS, settle

__all__ = [
    "GATE_CHECKS",
    "IDEMPOTENCY_WINDOW_S",
    "LOCK_KEY",
    "SPLITS_KEY_COLUMNS",
    "GateFailed",
    "Params",
    "PaymentProvider",
    "PayoutConfigError",
    "PayoutProviderUnavailable",
    "PayoutReview",
    "PayoutSendResult",
    "PayoutSender",
    "PayoutsNeedAttention",
    "PayoutsUnsettled",
    "SettlementBusy",
    "SettlementError",
    "SettlementOutcome",
    "SettlementParamsError",
    "SettlementRace",
    "SubUnitAmount",
    "allocate",
    "balances",
    "classify_answer",
    "connection_endpoint",
    "ledger_fingerprint",
    "parse_period",
    "payout_endpoint",
    "payouts_not_sent",
    "review_payout",
    "run_gate",
    "settle",
    "split_licence",
    "statement_path",
    "to_minor",
    "write_statement",
    "write_statement_file",
]
