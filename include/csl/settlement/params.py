"""A settlement run's parameters, parsed and checked before anything is read."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from csl.settlement.errors import SettlementParamsError

ANALYZE_AFTER_ROWS = 10_000  # a run that settles this many licences refreshes the ledger's statistics

_PERIOD = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?")


def parse_period(value: str | date | datetime | None, name: str = "period") -> datetime | None:
    """An ISO 8601 date (midnight UTC) or date-time (UTC unless it says otherwise) as an aware
    datetime; None or "" for no bound. Anything else (``2026-02-30``, ``2026-1-5``, ``yesterday``)
    raises ``SettlementParamsError`` naming ``name``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        try:
            if not _PERIOD.fullmatch(text):
                raise ValueError("not YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM]")
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise SettlementParamsError(f"{name}: expected an ISO date (2026-02-28) or date-time "
                                        f"(2026-02-28T10:00:00+01:00), got {text[:40]!r} ({exc})") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Params:
    share_bps: int = 7000
    minimum_payout_cents: int = 1000  # in minor units of each currency (1000 = $10.00, ¥1,000, 1.000 KWD)
    period_start: datetime | None = None  # ISO text, a date or a datetime; parsed (aware) on creation
    period_end: datetime | None = None
    dry_run: bool = False
    lock_wait_s: float = 0.0
    statement_timeout_s: int = 3600  # longest single statement of the run (the 1M-licence insert takes ~30 s)
    lock_timeout_s: int = 60         # longest wait for a table lock (DDL on a platform table), then stop
    analyze_after_rows: int = ANALYZE_AFTER_ROWS

    def __post_init__(self) -> None:
        for name, lo, hi in (("share_bps", 0, 10_000), ("minimum_payout_cents", 0, 10**15),
                             ("statement_timeout_s", 1, 86_400), ("lock_timeout_s", 1, 3600),
                             ("analyze_after_rows", 0, 10**12)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                label = "contributor_share_bps" if name == "share_bps" else name
                raise SettlementParamsError(f"{label}: expected a whole number {lo}..{hi}, got {value!r}")
        if isinstance(self.lock_wait_s, bool) or not isinstance(self.lock_wait_s, (int, float)) \
                or not 0 <= self.lock_wait_s <= 86_400:
            raise SettlementParamsError(f"lock_wait_s: expected 0..86400 seconds, got {self.lock_wait_s!r}")
        object.__setattr__(self, "period_start", parse_period(self.period_start, "period_start"))
        object.__setattr__(self, "period_end", parse_period(self.period_end, "period_end"))
        if self.period_start and self.period_end and self.period_start >= self.period_end:
            raise SettlementParamsError(f"period: period_start {self.period_start.isoformat()} must be before "
                                        f"period_end {self.period_end.isoformat()}")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for name in ("period_start", "period_end"):
            values[name] = values[name].isoformat() if values[name] else None
        return values
