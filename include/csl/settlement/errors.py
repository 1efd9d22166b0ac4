"""The settlement's errors: bad parameters, a busy lock, a race with the old platform, a failed gate,
an unreachable payment provider."""

from __future__ import annotations

from typing import Any

from csl.errors import BadInput, ProblemFound, Transient


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


class GateFailed(SettlementError):
    """The data-quality gate failed: the run was rolled back; findings and the validation are kept."""

    def __init__(self, message: str, *, outcome: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcome = outcome
