"""The money arithmetic, in integer minor units (property-tested; the SQL in
``include/sql/settlement/`` follows the same rules)."""

from __future__ import annotations

from collections.abc import Mapping


def allocate(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` minor units by integer ``weights``: largest remainder, ties to the
    lowest key. Parts are never negative (for total ≥ 0) and always sum to ``total``."""
    if total < 0:
        raise ValueError("allocate: total must be >= 0")
    positive = {k: w for k, w in weights.items() if w > 0}
    if not positive:
        raise ValueError("allocate: needs at least one positive weight")
    weight_sum = sum(positive.values())
    base = {k: total * w // weight_sum for k, w in positive.items()}
    leftover = total - sum(base.values())
    by_remainder = sorted(positive, key=lambda k: (-(total * positive[k] % weight_sum), k))
    for k in by_remainder[:leftover]:
        base[k] += 1
    return base


def split_licence(price_minor: int, share_bps: int, weights: Mapping[str, int]) -> tuple[int, dict[str, int]]:
    """(platform part, contributor parts) of one licence."""
    pool = (price_minor * share_bps + 5000) // 10000
    parts = allocate(pool, weights)
    return price_minor - pool, parts


def _clawback_parts(parts: Mapping[str, int], price_minor: int, refunded_before: int, refund: int) -> dict[str, int]:
    """Contributor clawbacks of one refund: the difference of cumulative allocations, so that
    a full refund in any number of pieces reverses the parts exactly."""
    contributor_total = sum(parts.values())

    def cumulative(refunded: int) -> dict[str, int]:
        if refunded == 0 or contributor_total == 0:
            return {k: 0 for k in parts}
        clawed = (2 * contributor_total * refunded + price_minor) // (2 * price_minor)  # half up
        return allocate(clawed, parts) if any(parts.values()) else {k: 0 for k in parts}

    before, after = cumulative(refunded_before), cumulative(refunded_before + refund)
    return {k: after.get(k, 0) - before.get(k, 0) for k in parts}
