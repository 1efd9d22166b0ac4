"""What a settlement run, a payout send and a payout review come back with: typed results whose
``as_dict()`` is the JSON the CLI prints (``--json``), the task records and XCom carries."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from csl.settlement.errors import PayoutsNeedAttention, PayoutsUnsettled

__all__ = ["PayoutReview", "PayoutSendResult", "SettlementOutcome"]


@dataclass(frozen=True, kw_only=True)
class SettlementOutcome:
    """One settlement run's figures.

    ``status`` is ``committed``, ``dry_run``, ``already committed`` (the run key was settled
    before: the figures it recorded then, with ``findings_count`` instead of ``findings``) or
    ``gate_failed`` (carried by ``GateFailed``: rolled back, no ``timings_s``, no payouts).
    ``payouts``, ``payout_holds`` and ``findings`` are lists of the rows' JSON objects."""

    status: str
    run_id: int
    run_key: str | None = None
    due: int = 0
    licences: int = 0
    held: int = 0
    splits_reused: int = 0
    splits_paid_before: int = 0
    by_currency: dict[str, dict[str, int]] = field(default_factory=dict)
    clawbacks: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] | None = None  # None: a run read back from its record (findings_count)
    findings_count: int | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    payouts: list[dict[str, Any]] = field(default_factory=list)
    payout_holds: list[dict[str, Any]] = field(default_factory=list)
    ledger_high_water: int | None = None
    timings_s: dict[str, Any] | None = None  # None: the gate failed before the run was timed

    @classmethod
    def of(cls, figures: dict[str, Any], **override: Any) -> SettlementOutcome:
        """From a run's figures (the run's own, or those recorded in ``csl_ops.settlement_runs``,
        which may predate a figure: it keeps its default); keys it does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**figures, **override}.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        """Today's dict: the figures in the run's order, ``status`` last (none for a failed gate)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "status"}
        for optional in ("findings", "findings_count", "timings_s"):
            if values[optional] is None:
                del values[optional]
        return values if self.status == "gate_failed" else values | {"status": self.status}

    def as_record(self) -> dict[str, Any]:
        """The figures a task run records (``csl_ops.task_runs.outcome``): no findings (they are in
        ``csl_ops.settlement_findings``), payouts counted (a failed gate's empty list is kept)."""
        values = {k: v for k, v in self.as_dict().items() if k != "findings"}
        if self.status == "gate_failed":
            return values
        del values["payouts"]
        return values | {"payouts": len(self.payouts)}

    def summary(self) -> dict[str, Any]:
        """The small figures the task returns (XCom) and logs: the run's counts, the number and
        total of its payouts, its held balances by reason."""
        summary = {name: getattr(self, name) for name in ("status", "run_id", "due", "licences", "held", "splits_reused",
                                                          "splits_paid_before", "by_currency", "clawbacks", "timings_s")}
        summary["payouts"] = len(self.payouts)
        summary["payout_minor"] = sum(p["amount_minor"] for p in self.payouts)
        summary["payout_holds"] = dict(Counter(h["reason"] for h in self.payout_holds))
        return summary


@dataclass(frozen=True, kw_only=True)
class PayoutSendResult:
    """One send: how many payouts each outcome had, and what went wrong with each that did not
    go through (``payout_id``, ``outcome``, ``error``, the provider's HTTP ``status`` when any)."""

    confirmed: int = 0
    failed: int = 0
    retry_later: int = 0
    needs_review: int = 0
    looked_up: int = 0  # of all, those sent past the idempotency window and looked up instead
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """The counts without the errors (the task's return value)."""
        return {k: v for k, v in self.as_dict().items() if k != "errors"}

    @property
    def ok(self) -> bool:
        """Nothing refused, nothing to review, nothing left to retry."""
        return not (self.failed or self.needs_review or self.retry_later)

    def raise_for_problems(self) -> None:
        """What makes a send a failure: refused payouts or payouts needing review are
        ``PayoutsNeedAttention`` (a person must act: sending again cannot help); payouts whose
        outcome is still unknown are ``PayoutsUnsettled`` (sent again with the same idempotency
        keys on the next try)."""
        if self.failed or self.needs_review:
            raise PayoutsNeedAttention(
                f"{self.failed} payout(s) refused, {self.needs_review} need review "
                f"(outcome unknown past the idempotency window): {self.errors[:5]}")
        if self.retry_later:
            raise PayoutsUnsettled(f"{self.retry_later} payout(s) with an unknown outcome, sent again with the same "
                                   f"idempotency key on retry: {self.errors[:3]}")


@dataclass(frozen=True, kw_only=True)
class PayoutReview:
    """A payout resolved by a person: ``status`` is ``confirmed`` (with ``transfer_id``) or ``failed``."""

    payout_id: int
    status: str
    amount_minor: int
    currency: str
    contributor_id: str
    transfer_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
