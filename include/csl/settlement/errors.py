"""The settlement's errors: bad parameters, a busy lock, a race with the old platform, a failed gate,
an unreachable payment provider, payouts that did not go through."""

from __future__ import annotations

from typing import TYPE_CHECKING

from csl.errors import BadInput, ProblemFound, Transient

if TYPE_CHECKING:
    from csl.settlement.results import SettlementOutcome


class SettlementError(ProblemFound):
    """The settlement cannot run as asked (bad parameter, inconsistent data)."""


class SettlementParamsError(SettlementError, BadInput, ValueError):
    """A settlement parameter is out of range; nothing was read or written."""


class SettlementBusy(SettlementError, Transient):
    """Another settlement run holds the lock."""


class SettlementRace(SettlementError, Transient):
    """The old platform wrote a split this run was writing (the unique split key refused ours): the
    run was rolled back; a retry reconciles the platform's row."""


class PayoutProviderUnavailable(SettlementError, Transient):
    """The payment provider cannot be reached or answered unreadably before anything was sent."""


class PayoutsNeedAttention(SettlementError):
    """Payouts were refused by the payment provider or need review: a person must act; sending
    again cannot help."""


class PayoutsUnsettled(SettlementError, Transient):
    """Payouts whose outcome is still unknown: the next send repeats them with the same
    idempotency keys."""


class GateFailed(SettlementError):
    """The data-quality gate failed: the run was rolled back; findings and the validation are kept.
    ``outcome`` is the rolled-back run's figures (status ``gate_failed``)."""

    def __init__(self, message: str, *, outcome: SettlementOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome
