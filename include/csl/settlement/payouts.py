"""Payouts: the state machine (instructed → sent → confirmed | failed | needs_review, forward
only) and the sender that drives it through the payment provider."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import psycopg

from csl.settlement.errors import SettlementBusy, SettlementError, SettlementParamsError
from csl.settlement.provider import PaymentProvider, PayoutConfigError
from csl.settlement.results import PayoutReview, PayoutSendResult

log = logging.getLogger("csl.settlement")

SEND_LOCK_KEY = 0x63736C5F706179  # "csl_pay"
# Stripe keeps an idempotency key (and the answer it gave) for at least 24 hours; past this
# (an hour of margin) a resend with the same key could create a second transfer.
IDEMPOTENCY_WINDOW_S = 23 * 3600

# a payout's licences whose split the old platform marked paid (only a confirmed payout of ours
# marks them, and a confirmed payout is never sent again), and licence × contributor pairs of the
# payout's contributor with more than one platform row: either way, sending could pay twice
_DOUBLE_PAY = """
SELECT (SELECT count(*) FROM csl_ops.payout_licences pl
        JOIN revenue_splits rs ON rs.license_id = pl.license_id AND rs.contributor_id = pl.contributor_id
        WHERE pl.payout_id = %(payout)s AND NOT pl.released AND rs.status = 'paid'),
       (SELECT count(*) FROM (SELECT 1 FROM revenue_splits rs
                              WHERE rs.contributor_id = %(contributor)s
                                AND EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = rs.license_id)
                              GROUP BY rs.license_id HAVING count(*) > 1) d)
"""


def payouts_not_sent(*, send_payouts: bool, dry_run: bool) -> str | None:
    """Why a settlement run sends no payouts, or None when it sends them: only with
    ``send_payouts`` and not in a dry run (a dry run moves no money). Anything but a bool is
    refused: a text such as ``"false"`` must not read as yes."""
    for name, value in (("send_payouts", send_payouts), ("dry_run", dry_run)):
        if not isinstance(value, bool):
            raise SettlementParamsError(f"{name}: expected true or false, got {value!r}")
    if not send_payouts:
        return "send_payouts is false: instructions stay 'instructed'"
    if dry_run:
        return "dry_run is true: no payouts are sent, instructions stay 'instructed'"
    return None


class PayoutSender:
    """Sends payouts as transfers to an HTTP endpoint with Stripe's request shape (``POST
    /v1/transfers``, form-encoded, ``Idempotency-Key`` header) and applies the answer.

    Before anything is sent, the API key is checked (``GET /v1/balance``): a 401/403 stops the
    send as a configuration error with every payout untouched. Each payout pays the destination
    recorded on it when it was instructed. Before its transfer, a payout whose licences the old
    platform has marked paid meanwhile, or whose contributor has duplicate platform splits, goes
    to ``needs_review``. Every attempt first marks the payout ``sent`` in a committed
    transaction, so a crash between the call and its answer can only leave an unknown outcome,
    never an unsent look (``classify_answer`` reads the answer):

    - a transfer confirms the payout and marks exactly the ``revenue_splits`` of the licences it
      covers ``paid``;
    - a refusal stated by the provider fails it: the amount returns to the contributor's
      balance and its licences are released for the next payout;
    - an unknown outcome leaves it ``sent``: the next send repeats the request with the same
      idempotency key while the key's window lasts (``idempotency_window_s`` after its first
      use); past it, the transfer is looked up (``GET /v1/transfers`` by transfer group and
      destination, matched on the idempotency key in its metadata) and, when none is found, the
      payout is set to ``needs_review`` — never sent blindly;
    - a 401/403 stops the whole send (the payout being sent stays ``sent``: nothing was processed,
      the next send repeats it).
    """

    def __init__(self, *, endpoint: str, api_key: str, transport: Any = None, timeout_s: float = 20.0,
                 idempotency_window_s: float = IDEMPOTENCY_WINDOW_S) -> None:
        self._provider = PaymentProvider(endpoint=endpoint, api_key=api_key, transport=transport, timeout_s=timeout_s)
        self._window_s = idempotency_window_s

    def close(self) -> None:
        self._provider.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, conn: psycopg.Connection, *, limit: int = 1000) -> PayoutSendResult:
        """Send (or look up) every payout not yet settled; returns counts by outcome and the
        errors (``PayoutSendResult.raise_for_problems`` says whether that is a failure).
        ``conn`` must be autocommit: each payout's steps commit on their own."""
        if not conn.autocommit:
            raise SettlementError("PayoutSender.send needs an autocommit connection (each step commits on its own)")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (SEND_LOCK_KEY,)).fetchone()[0]:
            raise SettlementBusy("another payout sender is running; not sending twice")
        try:
            pending = conn.execute(
                "SELECT id, contributor_id::text, currency, amount_minor, idempotency_key, run_id, status, destination, "
                "       first_sent_at IS NOT NULL AND now() - first_sent_at > make_interval(secs => %s) "
                "FROM csl_ops.payouts WHERE status IN ('instructed', 'sent') ORDER BY id LIMIT %s",
                (self._window_s, limit)).fetchall()
            counts = {"confirmed": 0, "failed": 0, "retry_later": 0, "needs_review": 0, "looked_up": 0}
            errors: list[dict[str, Any]] = []
            if pending:
                self._provider.check_key()
            for payout_id, contributor, currency, amount, key, run_id, status, destination, window_passed in pending:
                payout = _Payout(payout_id, contributor, currency, int(amount), key, run_id, destination)
                try:
                    if status == "sent" and window_passed:
                        counts["looked_up"] += 1
                        outcome, error = self._look_up(conn, payout)
                    else:
                        outcome, error = self._attempt(conn, payout, status)
                except PayoutConfigError as exc:
                    exc.counts = {**counts, "errors": errors}
                    raise
                counts[outcome] += 1
                if error:
                    errors.append({"payout_id": payout_id, "outcome": outcome, **error})
            return PayoutSendResult(**counts, errors=errors)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SEND_LOCK_KEY,))

    def _attempt(self, conn: psycopg.Connection, payout: _Payout, status: str) -> tuple[str, dict[str, Any] | None]:
        """The checks before money moves, then the transfer."""
        if payout.destination is None:  # instructed before destinations were recorded (migration 0011)
            if status == "instructed":  # never sent: released, the next run instructs it to a verified account
                reason = ("instructed before payout destinations were recorded: released, the next run pays the "
                          "balance to the contributor's verified account")
                fail(conn, payout, reason, from_status="instructed")
                return "failed", {"error": reason}
            reason = "sent before payout destinations were recorded (to a guessed account): check the provider"
            set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        paid_elsewhere, duplicated = conn.execute(_DOUBLE_PAY, {"payout": payout.id,
                                                                "contributor": payout.contributor}).fetchone()
        if paid_elsewhere or duplicated:
            reason = (f"not sent: {paid_elsewhere} of its licences were marked paid outside this ledger, "
                      f"{duplicated} licence(s) of the contributor have duplicate platform splits; sending could pay "
                      "twice (resolve with review-payout once the platform's records are checked)")
            set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        return self._post(conn, payout)

    def _post(self, conn: psycopg.Connection, payout: _Payout) -> tuple[str, dict[str, Any] | None]:
        with conn.transaction():  # committed before the call: a crash from here on is an unknown outcome
            marked = conn.execute(
                "UPDATE csl_ops.payouts SET status = 'sent', attempts = attempts + 1, "
                "first_sent_at = coalesce(first_sent_at, now()), last_sent_at = now(), updated_at = now() "
                "WHERE id = %s AND status IN ('instructed', 'sent') RETURNING id", (payout.id,)).fetchone()
        if marked is None:
            return "retry_later", {"error": "payout changed state while sending"}
        form = {"amount": str(payout.amount), "currency": payout.currency, "destination": payout.destination,
                "transfer_group": payout.transfer_group, "metadata[contributor_id]": payout.contributor,
                "metadata[payout_id]": str(payout.id), "metadata[idempotency_key]": payout.key}
        answer = self._provider.create_transfer(form, idempotency_key=payout.key)
        if answer.kind == "unreachable":
            return "retry_later", {"error": answer.error}
        if answer.kind == "transfer":
            return self._apply_transfer(conn, payout, answer.body)
        if answer.kind == "unauthorized":  # not processed: the payout stays 'sent' and is repeated with its key
            raise PayoutConfigError(f"refused by the payment provider while sending payout {payout.id} "
                                    f"(HTTP {answer.status}: {answer.error}); sending stopped")
        if answer.kind == "refused":
            fail(conn, payout, answer.error)
            return "failed", {"status": answer.status, "error": answer.error}
        # outcome unknown: the same key is sent again next time (or looked up past the window)
        return "retry_later", {"status": answer.status, "error": answer.error}

    def _look_up(self, conn: psycopg.Connection, payout: _Payout) -> tuple[str, dict[str, Any] | None]:
        """The outcome of a payout sent long ago: its transfer, by its idempotency key (in our
        metadata; local payout ids repeat across environments), among the transfers of its group
        to its destination (every page)."""
        answer = self._provider.find_transfer(transfer_group=payout.transfer_group, destination=payout.destination,
                                              idempotency_key=payout.key)
        if answer.kind == "transfer":
            return self._apply_transfer(conn, payout, answer.body)
        if answer.kind == "unauthorized":
            raise PayoutConfigError(f"refused by the payment provider while looking up payout {payout.id} "
                                    f"(HTTP {answer.status}); sending stopped")
        if answer.kind != "not_found":
            return "retry_later", ({"status": answer.status} if answer.status else {}) | {"error": answer.error}
        reason = (f"outcome unknown past the {self._window_s / 3600:g} h idempotency window and no transfer found "
                  f"with its idempotency key in group {payout.transfer_group} to "
                  f"{payout.destination or 'any destination'}: resending could pay twice; review it")
        set_needs_review(conn, payout, reason)
        return "needs_review", {"error": reason}

    def _apply_transfer(self, conn: psycopg.Connection, payout: _Payout,
                        transfer: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
        if (transfer.get("amount") != payout.amount or str(transfer.get("currency", "")).lower() != payout.currency
                or transfer.get("reversed")
                or (payout.destination and transfer.get("destination") != payout.destination)):
            reason = (f"transfer {transfer.get('id')} does not match the payout (amount {transfer.get('amount')} "
                      f"{transfer.get('currency')} to {transfer.get('destination')}, reversed={transfer.get('reversed')}; "
                      f"expected {payout.amount} {payout.currency} to {payout.destination})")
            set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        confirm(conn, payout, str(transfer["id"]))
        return "confirmed", None

# -- the state machine: forward transitions only (the csl_ops.payouts trigger refuses the rest) --
def confirm(conn: psycopg.Connection, payout: _Payout, transfer_id: str, *, from_status: str = "sent") -> bool:
    """``from_status`` → ``confirmed`` with the transfer; exactly the covered licences' splits become ``paid``."""
    with conn.transaction():
        confirmed = conn.execute(
            "UPDATE csl_ops.payouts SET status = 'confirmed', transfer_id = %s, error = NULL, updated_at = now() "
            "WHERE id = %s AND status = %s RETURNING id", (transfer_id, payout.id, from_status)).fetchone()
        if confirmed is None:
            return False
        # exactly the licences this payout covers (csl_ops.payout_licences), for its contributor:
        # read first, then updated by licence (two plain plans)
        licences = [row[0] for row in conn.execute(
            "SELECT license_id FROM csl_ops.payout_licences WHERE payout_id = %s", (payout.id,)).fetchall()]
        conn.execute("UPDATE revenue_splits SET status = 'paid', payment_date = now() "
                     "WHERE license_id = ANY(%s) AND contributor_id = %s AND status = 'pending'",
                     (licences, payout.contributor))
    return True

def set_needs_review(conn: psycopg.Connection, payout: _Payout, reason: str) -> None:
    """``instructed``/``sent`` → ``needs_review``: a person looks at the provider before anything more."""
    with conn.transaction():
        conn.execute("UPDATE csl_ops.payouts SET status = 'needs_review', error = %s, updated_at = now() "
                     "WHERE id = %s AND status IN ('instructed', 'sent')", (reason, payout.id))
    log.error("payout %s (%s %s to %s) needs review: %s", payout.id, payout.amount, payout.currency,
              payout.contributor, reason)

def fail(conn: psycopg.Connection, payout: _Payout, error: str, *, from_status: str = "sent") -> bool:
    """``from_status`` → ``failed``: the amount goes back to the balance, the licences are released."""
    with conn.transaction():
        updated = conn.execute("UPDATE csl_ops.payouts SET status = 'failed', error = %s, updated_at = now() "
                               "WHERE id = %s AND status = %s RETURNING run_id",
                               (error, payout.id, from_status)).fetchone()
        if updated is None:
            return False
        conn.execute("UPDATE csl_ops.payout_ranges SET released = true WHERE payout_id = %s", (payout.id,))
        entry = conn.execute("INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo) VALUES "
                             "(%s, 'payout', %s, %s) RETURNING id",
                             (updated[0], payout.currency,
                              f"payout {payout.id} not paid: amount back to the balance")).fetchone()[0]
        conn.execute("INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, source_id, kind) "
                     "SELECT %s, id, %s, %s, 'payout_reversal' FROM csl_ops.ledger_accounts "
                     "WHERE kind = 'contributor_payable' AND contributor_id = %s AND currency = %s",
                     (entry, -payout.amount, payout.key, payout.contributor, payout.currency))
        conn.execute("INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, source_id, kind) "
                     "SELECT %s, id, %s, %s, 'payout_reversal' FROM csl_ops.ledger_accounts "
                     "WHERE kind = 'payouts_in_transit' AND currency = %s",
                     (entry, payout.amount, payout.key, payout.currency))
    return True


def review_payout(conn: psycopg.Connection, payout_id: int, *, transfer_id: str | None = None,
                  not_paid: str | None = None) -> PayoutReview:
    """Resolve a payout in ``needs_review`` after a person has checked the provider's records:

    - ``transfer_id``: the transfer exists (found in the dashboard): the payout is confirmed with
      it and the licences it covers become ``paid``;
    - ``not_paid`` (the reason, for the record): no transfer was made: the payout fails, its amount
      returns to the contributor's balance and its licences are released, so the next run pays
      them under a new payout (a new idempotency key: never a blind resend of the old one).
    """
    if (transfer_id is None) == (not_paid is None):
        raise SettlementParamsError("review_payout: give exactly one of transfer_id (it was paid) or not_paid (reason)")
    if transfer_id is not None and not re.fullmatch(r"tr_[A-Za-z0-9]{1,64}", transfer_id):
        raise SettlementParamsError(f"review_payout: {transfer_id[:80]!r} is not a transfer id (tr_…)")
    if not_paid is not None and (not not_paid.strip() or len(not_paid) > 500 or not not_paid.isprintable()):
        raise SettlementParamsError("review_payout: the not-paid reason must be 1..500 printable characters")
    row = conn.execute("SELECT id, contributor_id::text, currency, amount_minor, idempotency_key, run_id, status, "
                       "destination FROM csl_ops.payouts WHERE id = %s", (payout_id,)).fetchone()
    if row is None:
        raise SettlementParamsError(f"review_payout: no payout {payout_id}")
    if row[6] != "needs_review":
        raise SettlementError(f"payout {payout_id} is {row[6]!r}, not 'needs_review': nothing to resolve")
    payout = _Payout(row[0], row[1], row[2], int(row[3]), row[4], row[5], row[7])
    if transfer_id is not None:
        done = confirm(conn, payout, transfer_id, from_status="needs_review")
        outcome = "confirmed"
    else:
        done = fail(conn, payout, f"reviewed: not paid: {not_paid}", from_status="needs_review")
        outcome = "failed"
    if not done:
        raise SettlementError(f"payout {payout_id} changed state during the review; look again")
    log.warning("payout %s reviewed: %s (%s)", payout_id, outcome, transfer_id or not_paid)
    return PayoutReview(payout_id=payout_id, status=outcome, amount_minor=payout.amount, currency=payout.currency,
                        contributor_id=payout.contributor, transfer_id=transfer_id)


@dataclass(frozen=True)
class _Payout:
    id: int
    contributor: str
    currency: str
    amount: int
    key: str
    run_id: int
    destination: str | None

    @property
    def transfer_group(self) -> str:
        return f"csl-settlement-{self.run_id}"
