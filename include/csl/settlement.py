"""Revenue-split settlement: exact to the cent, exactly once, with a double-entry ledger.

Rules (README, "Settlement rules"):

- Money is integer minor units end to end. Platform floats are converted by one rule
  (``csl_ops.minor_units`` in SQL, ``to_minor`` here): the float's decimal at 15 significant
  digits, times 100; a value with a real sub-cent part is a finding, never silently rounded.
  Each currency (from the payment intent) is settled on its own.
- A licence is due when its payment is ``completed`` and it is not yet in the ledger. The
  contributor pool is ``share_bps`` of the price, rounded half up; a direct sample licence's
  pool goes to the sample's contributor, a generation licence's pool is divided among the
  contributors of its source samples, weighted by how many samples each contributed, by
  largest remainder (ties: lowest contributor id). The parts always sum exactly.
- Existing ``revenue_splits`` rows are reused when they match to the cent, otherwise the
  licence is held with a finding; new rows are written ``pending``, in exact cents.
- Refunds after settlement are clawed back in proportion to the cumulative refunded amount,
  exact to the cent; a balance may go negative and is carried forward.
- Every run holds an advisory lock and runs in one REPEATABLE READ transaction (one snapshot):
  allocate, post, claw back, instruct payouts, then the data-quality gate over all of it; a
  failing gate rolls the run back (nothing half-written, no payout) and keeps its findings
  and validation result.
- The ledger is append-only; every posting has a composite idempotency key (licence × kind ×
  account, source × kind × account, or entry × account), so nothing can be posted twice.
- Each payout records the licences it covers; sending marks a payout ``sent`` (committed)
  before its HTTP call, and a payout whose outcome stayed unknown past the idempotency
  window is looked up, never sent blindly again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from csl.errors import CslError
from csl.sqlfiles import load, statements

__all__ = [
    "GATE_CHECKS",
    "IDEMPOTENCY_WINDOW_S",
    "GateFailed",
    "Params",
    "PayoutSender",
    "SettlementBusy",
    "SettlementError",
    "SettlementParamsError",
    "SubCentAmount",
    "allocate",
    "balances",
    "ledger_fingerprint",
    "review_payout",
    "settle",
    "split_licence",
    "to_minor",
    "write_statement",
]

log = logging.getLogger("csl.settlement")
LOCK_KEY = 0x63736C5F736574  # "csl_set"
SEND_LOCK_KEY = 0x63736C5F706179  # "csl_pay"
# Stripe keeps an idempotency key (and the answer it gave) for at least 24 hours; past this
# (an hour of margin) a resend with the same key could create a second transfer.
IDEMPOTENCY_WINDOW_S = 23 * 3600
WORK_MEM = "256MB"  # per hash or sort of the run's one backend (SET LOCAL: this transaction only)
ANALYZE_AFTER_ROWS = 10_000  # a run that settles this many licences refreshes the ledger's statistics
GATE_CHECKS = ("postings_reference_entries_and_accounts", "entries_balance", "allocations_sum_to_price", "no_due_licence_left", "platform_rows_round_trip",
               "no_duplicate_splits", "findings", "payouts_clear_balances", "payout_ranges_are_disjoint",
               "clawbacks_match_refunds", "clawbacks_within_allocation", "clawbacks_proportional")


class SettlementError(CslError):
    """The settlement cannot run as asked (bad parameter, inconsistent data)."""


class SettlementParamsError(SettlementError, ValueError):
    """A settlement parameter is out of range; nothing was read or written."""


class SettlementBusy(SettlementError):
    """Another settlement run holds the lock."""


class SubCentAmount(SettlementError, ValueError):
    """A money value has a real sub-cent part."""


class GateFailed(SettlementError):
    """The data-quality gate failed: the run was rolled back; findings and the validation are kept."""

    def __init__(self, message: str, *, outcome: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True, kw_only=True)
class Params:
    share_bps: int = 7000
    minimum_payout_cents: int = 1000
    period_start: str | None = None
    period_end: str | None = None
    dry_run: bool = False
    lock_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.share_bps, int) or not 0 <= self.share_bps <= 10_000:
            raise SettlementParamsError(f"contributor_share_bps: expected a whole number 0..10000, got {self.share_bps!r}")
        if not isinstance(self.minimum_payout_cents, int) or self.minimum_payout_cents < 0:
            raise SettlementParamsError(f"minimum_payout_cents: expected a whole number >= 0, got {self.minimum_payout_cents!r}")
        if self.period_start and self.period_end and self.period_start >= self.period_end:
            raise SettlementParamsError(f"period: period_start {self.period_start} must be before period_end {self.period_end}")


# -- the arithmetic (property-tested; the SQL in include/sql/settlement/ follows the same rules) --
def to_minor(amount: float | Decimal | str) -> int:
    """Exact minor units of an amount; raises ``SubCentAmount`` on a real sub-cent part.

    A float is read as its decimal at 15 significant digits, exactly like ``csl_ops.minor_units``
    (PostgreSQL's float8 → numeric): digits past the 15th are float noise, so ``0.1 + 0.2`` is
    30 cents while ``10.005`` keeps its half cent. Decimals and strings are taken as written.
    """
    exact = Decimal(format(amount, ".15g")) if isinstance(amount, float) else Decimal(str(amount))
    cents = _whole_cents(exact * 100)
    if cents is None:
        raise SubCentAmount(f"{amount!r} is not a whole number of cents")
    return cents


def _whole_cents(cents: Decimal) -> int | None:
    """``cents`` as an int when it is a finite whole number, else None."""
    if not cents.is_finite() or cents != cents.to_integral_value():
        return None
    return int(cents)


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


# -- the run ----------------------------------------------------------------------------------
def _acquire(conn: psycopg.Connection, wait_s: float) -> None:
    """The settlement lock, for the session (taken before the run's transaction, so that its
    snapshot is taken after a run that held the lock has committed)."""
    deadline = time.monotonic() + wait_s
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            holder = conn.execute(
                "SELECT a.pid, a.application_name, now() - a.xact_start FROM pg_locks l JOIN pg_stat_activity a "
                "USING (pid) WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted LIMIT 1",
                (LOCK_KEY & 0xFFFFFFFF,)).fetchone()
            who = f" (pid {holder[0]}, {holder[1] or 'unnamed'}, running {holder[2]})" if holder else ""
            raise SettlementBusy(f"another settlement run holds the settlement lock{who}; not starting a second one")
        time.sleep(0.5)


def settle(conn: psycopg.Connection, params: Params, *, run_key: str) -> dict[str, Any]:
    """One settlement run, all or nothing. ``conn`` must be an autocommit connection.

    Returns the run's figures; raises ``GateFailed`` (after recording the findings and the
    validation) when the data-quality gate fails, ``SettlementBusy`` when another run holds
    the lock.
    """
    if not conn.autocommit:
        raise SettlementError("settle needs an autocommit connection (it manages its own transaction)")
    _acquire(conn, params.lock_wait_s)
    try:
        previous = conn.execute("SELECT id, status, figures FROM csl_ops.settlement_runs WHERE run_key = %s",
                                (run_key,)).fetchone()
        if previous and previous[1] == "committed":
            return {**previous[2], "status": "already committed", "run_id": previous[0]}
        return _settle(conn, params, run_key)
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except psycopg.OperationalError:  # the connection is gone, and the session lock with it
            pass


def _settle(conn: psycopg.Connection, params: Params, run_key: str) -> dict[str, Any]:
    values = {"share_bps": params.share_bps, "period_start": params.period_start, "period_end": params.period_end,
              "run_key": run_key, "minimum": params.minimum_payout_cents}
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: list[float] = [started]) -> None:  # noqa: B006 - a running clock
        now = time.perf_counter()
        timings[name] = round(now - t0[0], 3)
        t0[0] = now

    outcome: dict[str, Any] = {}
    try:
        with conn.transaction():
            # one snapshot for the whole run: the gate judges exactly what the run read (under READ
            # COMMITTED a licence completed during the run would fail "no due licence left")
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SET LOCAL application_name = 'csl-settlement'")
            # a run hashes and sorts every due licence several times: with the default 4 MB each
            # hash spills to disk in batches (measured: 2-3x slower at a million licences)
            conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            # JIT compiles each large query for 0.1-0.5 s; these are set-based passes it barely speeds up
            conn.execute("SET LOCAL jit = off")
            # a retried run replaces its earlier failed attempt (findings included)
            conn.execute("DELETE FROM csl_ops.settlement_findings WHERE run_id IN (SELECT id FROM csl_ops.settlement_runs "
                         "WHERE run_key = %s AND status <> 'committed')", (run_key,))
            conn.execute("DELETE FROM csl_ops.settlement_runs WHERE run_key = %s AND status <> 'committed'", (run_key,))
            run_id = conn.execute(
                "INSERT INTO csl_ops.settlement_runs (run_key, status, params) VALUES (%s, 'running', %s) RETURNING id",
                (run_key, json.dumps(vars(params)))).fetchone()[0]
            values["run_id"] = run_id
            values["postings_before"] = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
            for name in ("due", "held", "parts", "reconcile", "post_sales"):
                for statement in statements(load(f"settlement/{name}.sql")):
                    t0 = time.perf_counter()
                    conn.execute(statement, values)
                    if "INSERT INTO revenue_splits" in statement:  # the platform's table: reported apart
                        timings[f"{name}.revenue_splits"] = round(time.perf_counter() - t0, 3)
                lap(name)
                if name == "due" and conn.execute("SELECT EXISTS (SELECT 1 FROM due)").fetchone()[0]:
                    _GateLibraries.preload()  # the gate will judge postings: import its libraries meanwhile
            figures = _sale_figures(conn)
            clawbacks = _post_clawbacks(conn, run_id, run_key)
            lap("clawbacks")
            conn.execute("INSERT INTO csl_ops.settlement_findings (run_id, kind, license_id, detail) "
                         "SELECT %s, kind, license_id, detail FROM held", (run_id,))
            if figures["licences"] + clawbacks["refunds"] >= ANALYZE_AFTER_ROWS:
                # the statistics still describe the tables before this run's bulk writes: without
                # fresh ones the payout and gate queries get nested-loop plans that never finish
                conn.execute("ANALYZE csl_ops.postings, csl_ops.journal_entries, csl_ops.ledger_accounts, "
                             "csl_ops.settled_licences, revenue_splits")
                lap("analyze")
            payouts = _instruct_payouts(conn, values)
            if len(payouts) >= ANALYZE_AFTER_ROWS // 10:
                conn.execute("ANALYZE csl_ops.payouts, csl_ops.payout_ranges")
            lap("payouts")
            gate = run_gate(conn, values)
            lap("gate")
            outcome = {"run_id": run_id, "run_key": run_key, **figures, "clawbacks": clawbacks,
                       "findings": _findings(conn, run_id), "gate": gate, "payouts": payouts,
                       "ledger_high_water": values["ledger_high_water"]}
            if not gate["success"]:
                raise _Rollback()
            outcome["timings_s"] = timings
            status = "dry_run" if params.dry_run else "committed"
            conn.execute("UPDATE csl_ops.settlement_runs SET status = %s, figures = %s, gate = %s, finished_at = now() "
                         "WHERE id = %s", (status, json.dumps(_small(outcome), default=str),
                                           json.dumps(gate, default=str), run_id))
            if params.dry_run:
                raise _Rollback()
    except _Rollback:
        if not outcome.get("gate", {}).get("success", True):
            outcome["payouts"] = []  # rolled back with the rest
            _record_failed_gate(conn, f"{run_key}#dry_run" if params.dry_run else run_key, params, outcome)
            raise GateFailed("settlement gate failed: " + ", ".join(
                f"{c['check']}={c['violations']}" for c in outcome["gate"]["checks"] if c["violations"]),
                outcome=outcome) from None
        outcome.update(status="dry_run")
        return outcome
    outcome["status"] = "committed"
    log.info("settlement %s: %s licences, %s clawbacks, %s payouts", run_key, outcome["licences"],
             outcome["clawbacks"]["refunds"], len(outcome["payouts"]))
    return outcome


class _Rollback(Exception):
    """Leave the run's transaction without committing (dry run, failed gate)."""


def _small(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("findings",)} | {
        "findings_count": len(outcome.get("findings", []))}


def _sale_figures(conn: psycopg.Connection) -> dict[str, Any]:
    # the contributors' total of a licence is its pool (the parts always sum to it)
    per_currency = conn.execute("SELECT currency, count(*), sum(price_minor), sum(pool_minor) FROM pool "
                                "GROUP BY 1 ORDER BY 1").fetchall()
    contributor = {cur: pool for cur, _, _, pool in per_currency}
    reused = conn.execute("SELECT count(*) FROM pool WHERE license_id IN (SELECT license_id FROM existing)").fetchone()[0]
    prepaid = conn.execute("SELECT count(DISTINCT license_id) FROM prepaid").fetchone()[0]
    held = conn.execute("SELECT count(DISTINCT license_id) FROM held").fetchone()[0]
    due = conn.execute("SELECT count(*) FROM due").fetchone()[0]
    return {
        "due": due,
        "licences": sum(r[1] for r in per_currency),
        "held": held,
        "splits_reused": reused,
        "splits_paid_before": prepaid,
        "by_currency": {cur: {"licences": n, "gross_minor": int(gross), "contributors_minor": int(contributor.get(cur, 0)),
                              "platform_minor": int(gross) - int(contributor.get(cur, 0))}
                        for cur, n, gross, _ in per_currency},
    }


# refunds not clawed back yet (a clawback's lines are keyed by the refund id) of settled licences
_NEW_REFUNDS = """
WITH fresh AS MATERIALIZED (
    SELECT r.id, r.amount, r.currency, r.payment_intent_id, r.created_at FROM refunds r
    WHERE r.status = 'succeeded'
      AND NOT EXISTS (SELECT 1 FROM csl_ops.postings p WHERE p.source_id = r.id AND p.kind = 'clawback')
)
SELECT r.id, r.amount, csl_ops.minor_units(r.amount), lower(r.currency), sl.license_id, sl.currency, sl.price_minor,
       (SELECT count(*) FROM licenses l2 WHERE l2.payment_intent_id = r.payment_intent_id) AS licences_on_intent
FROM fresh r
JOIN csl_ops.settled_licences sl ON sl.payment_intent_id = r.payment_intent_id
WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.kind LIKE 'refund_%%' AND h.detail->>'refund_id' = r.id)
ORDER BY sl.license_id, r.created_at, r.id
"""


def _post_clawbacks(conn: psycopg.Connection, run_id: int, run_key: str) -> dict[str, Any]:
    """Refunds of settled licences not yet clawed back: exact, cumulative, per contributor."""
    new = conn.execute(_NEW_REFUNDS).fetchall()
    if not new:
        return {"refunds": 0, "contributors_minor": 0}
    licences = sorted({r[4] for r in new})
    parts: dict[Any, dict[str, int]] = defaultdict(dict)
    for license_id, contributor, amount in conn.execute(
            "SELECT p.license_id, a.contributor_id::text, -p.amount_minor FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
            "WHERE p.license_id = ANY(%s) AND p.kind = 'sale' AND p.source_id IS NULL", (licences,)).fetchall():
        parts[license_id][contributor] = amount
    refunded_before: dict[Any, int] = defaultdict(int)
    for license_id, total in conn.execute(
            "SELECT p.license_id, sum(p.amount_minor) FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'clearing' "
            "WHERE p.license_id = ANY(%s) AND p.kind = 'clawback' GROUP BY 1", (licences,)).fetchall():
        refunded_before[license_id] = -int(total)
    rows: list[tuple[str, str | None, str, int, Any, str]] = []  # (account kind, contributor, currency, amount, licence, refund)
    held = []
    total_contributors = 0
    for refund_id, amount, amount_cents, refund_currency, license_id, currency, price_minor, on_intent in new:
        if on_intent != 1:
            held.append((license_id, "refund_ambiguous_licence", {"refund_id": refund_id, "licences_on_intent": on_intent}))
            continue
        refund = _whole_cents(amount_cents)  # csl_ops.minor_units: the same conversion as prices
        if refund is None:
            held.append((license_id, "refund_sub_cent", {"refund_id": refund_id, "amount": repr(amount)}))
            continue
        if refund_currency != currency:
            held.append((license_id, "refund_currency_mismatch", {"refund_id": refund_id, "currency": refund_currency}))
            continue
        if refund <= 0 or refunded_before[license_id] + refund > price_minor:
            held.append((license_id, "refund_exceeds_price", {"refund_id": refund_id, "refund_minor": refund,
                                                             "refunded_before": refunded_before[license_id],
                                                             "price_minor": price_minor}))
            continue
        claw = _clawback_parts(parts.get(license_id, {}), price_minor, refunded_before[license_id], refund)
        refunded_before[license_id] += refund
        contributors = sum(claw.values())
        total_contributors += contributors
        for contributor, value in claw.items():
            if value:
                rows.append(("contributor_payable", contributor, currency, value, license_id, refund_id))
        if refund - contributors:
            rows.append(("platform_revenue", None, currency, refund - contributors, license_id, refund_id))
        rows.append(("clearing", None, currency, -refund, license_id, refund_id))
    for license_id, kind, detail in held:
        conn.execute("INSERT INTO held VALUES (%s, %s, %s)", (license_id, kind, json.dumps(detail, default=str)))
    if not rows:
        return {"refunds": 0, "contributors_minor": 0, "held": len(held)}
    entries = {}
    for currency in sorted({r[2] for r in rows}):
        entries[currency] = conn.execute(
            "INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo) VALUES (%s, 'clawback', %s, %s) "
            "RETURNING id", (run_id, currency, f"refund clawbacks by run {run_key}")).fetchone()[0]
    accounts = sorted({(r[0], r[1], r[2]) for r in rows}, key=str)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO csl_ops.ledger_accounts (kind, contributor_id, currency) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            accounts)
    account_ids = {(kind, contributor, currency): account_id for account_id, kind, contributor, currency in conn.execute(
        "SELECT id, kind, contributor_id::text, currency FROM csl_ops.ledger_accounts "
        "WHERE currency = ANY(%s)", (sorted({r[2] for r in rows}),)).fetchall()}
    columns = list(zip(*[(entries[cur], account_ids[(kind, contributor, cur)], amount, license_id, refund_id)
                         for kind, contributor, cur, amount, license_id, refund_id in rows], strict=True))
    conn.execute(  # one set-based insert, not a statement per posting
        "INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, source_id, kind) "
        "SELECT * , 'clawback' FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::uuid[], %s::text[])",
        [list(c) for c in columns])
    return {"refunds": len({r[5] for r in rows}), "contributors_minor": total_contributors, "held": len(held)}


def _findings(conn: psycopg.Connection, run_id: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT kind, license_id, detail FROM held ORDER BY kind, license_id").fetchall()
    return [{"kind": k, "license_id": str(l) if l else None, "detail": d} for k, l, d in rows]


class _GateLibraries:
    """Great Expectations takes about 6 s to import. A run that will post starts the import in
    a thread while PostgreSQL does the bulk of the work (psycopg releases the GIL while it waits),
    and the gate waits for it. Not a daemon thread: an import cut short by interpreter exit
    could hang, so at worst a failing run exits a few seconds later."""

    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def preload(cls) -> None:
        with cls._lock:
            if cls._thread is None and "great_expectations" not in sys.modules:
                cls._thread = threading.Thread(target=cls._import, name="csl-gate-import")
                cls._thread.start()

    @staticmethod
    def _import() -> None:
        try:
            import great_expectations  # noqa: F401
            import pandas  # noqa: F401
        except Exception:  # noqa: BLE001 - the gate's own import reports it
            log.exception("preloading the gate's libraries failed")

    @classmethod
    def wait(cls) -> None:
        with cls._lock:
            thread = cls._thread
        if thread is not None:
            thread.join()


def run_gate(conn: psycopg.Connection, values: Mapping[str, Any]) -> dict[str, Any]:
    """The data-quality gate (Great Expectations) over the run's checks (``GATE_CHECKS``), the
    balance of every journal entry it made (sales, clawbacks, payouts) and its payouts."""
    started = time.perf_counter()
    rows = conn.execute(load("settlement/gate_checks.sql"), values).fetchall()
    posted = conn.execute("SELECT count(*), count(*) FILTER (WHERE kind = 'clawback') FROM csl_ops.journal_entries "
                          "WHERE run_id = %s", (values["run_id"],)).fetchone()
    if posted[1]:
        rows += conn.execute(load("settlement/gate_clawbacks.sql"), values).fetchall()
    else:  # the run clawed nothing back: nothing for these checks to judge
        rows += [("clawbacks_within_allocation", 0), ("clawbacks_proportional", 0)]
    posted = posted[0]
    if not posted and all(v == 0 for _, v in rows) and {c for c, _ in rows} == set(GATE_CHECKS):
        # nothing was posted and every check passes: no data for an expectation suite to judge
        return {"success": True, "checks": [{"check": c, "violations": int(v)} for c, v in rows], "entries": 0,
                "payouts": 0, "validation": [], "note": "no postings in this run: SQL checks only"}
    checked = time.perf_counter()
    _GateLibraries.wait()
    import great_expectations as gx
    import pandas as pd

    checks = pd.DataFrame(rows, columns=["check", "violations"])
    checks["violations"] = checks["violations"].astype("int64")
    entries = pd.DataFrame(conn.execute(
        "SELECT e.id, e.kind, e.currency, sum(p.amount_minor) FROM csl_ops.journal_entries e "
        "JOIN csl_ops.postings p ON p.entry_id = e.id WHERE e.run_id = %s GROUP BY 1, 2, 3",
        (values["run_id"],)).fetchall(), columns=["entry_id", "kind", "currency", "sum_minor"])
    entries["sum_minor"] = entries["sum_minor"].astype("int64")
    payouts = pd.DataFrame(conn.execute(
        "SELECT po.id, po.amount_minor, coalesce(pp.amount_minor, 0) FROM csl_ops.payouts po "
        "LEFT JOIN csl_ops.postings pp ON pp.source_id = po.idempotency_key AND pp.kind = 'payout' "
        "WHERE po.run_id = %s", (values["run_id"],)).fetchall(),
        columns=["payout_id", "amount_minor", "posted_minor"])
    for column in ("amount_minor", "posted_minor"):
        payouts[column] = payouts[column].astype("int64")

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("settlement")
    suites = [
        ("checks", checks, [gx.expectations.ExpectColumnValuesToBeBetween(column="violations", min_value=0, max_value=0),
                            gx.expectations.ExpectColumnDistinctValuesToEqualSet(column="check",
                                                                                 value_set=list(GATE_CHECKS)),
                            gx.expectations.ExpectTableRowCountToEqual(value=len(GATE_CHECKS))]),
        ("entries", entries, [gx.expectations.ExpectColumnValuesToBeBetween(column="sum_minor", min_value=0, max_value=0)]),
    ]
    if len(payouts):
        suites.append(("payouts", payouts, [
            gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="amount_minor", column_B="posted_minor"),
            gx.expectations.ExpectColumnValuesToBeBetween(column="amount_minor",
                                                          min_value=max(int(values["minimum"]), 1)),
        ]))
    imported = time.perf_counter()
    results = []
    for name, frame, expectations in suites:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name).get_batch(
            batch_parameters={"dataframe": frame})
        for expectation in expectations:
            result = batch.validate(expectation)
            results.append({"asset": name, "expectation": type(expectation).__name__, "success": bool(result.success),
                            "result": json.loads(json.dumps(result.result, default=str))})
    return {"success": all(r["success"] for r in results),
            "checks": [{"check": c, "violations": int(v)} for c, v in checks.itertuples(index=False)],
            "entries": len(entries), "payouts": len(payouts), "validation": results,
            "timings_s": {"checks_sql": round(checked - started, 3), "import_and_frames": round(imported - checked, 3),
                          "validation": round(time.perf_counter() - imported, 3)}}


def _record_failed_gate(conn: psycopg.Connection, run_key: str, params: Params, outcome: dict[str, Any]) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM csl_ops.settlement_findings WHERE run_id IN (SELECT id FROM csl_ops.settlement_runs "
                     "WHERE run_key = %s AND status <> 'committed')", (run_key,))
        run_id = conn.execute(
            "INSERT INTO csl_ops.settlement_runs (run_key, status, params, figures, gate, finished_at) "
            "VALUES (%s, 'gate_failed', %s, %s, %s, now()) "
            "ON CONFLICT (run_key) DO UPDATE SET status = 'gate_failed', figures = excluded.figures, "
            "gate = excluded.gate, finished_at = now() RETURNING id",
            (run_key, json.dumps(vars(params)), json.dumps(_small(outcome), default=str),
             json.dumps(outcome["gate"], default=str))).fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO csl_ops.settlement_findings (run_id, kind, license_id, detail) VALUES (%s, %s, %s, %s)",
                            [(run_id, f["kind"], f["license_id"], json.dumps(f["detail"], default=str))
                             for f in outcome.get("findings", [])])


def _instruct_payouts(conn: psycopg.Connection, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Balances at or over the minimum become payout instructions (with the licences each
    covers); the rest is carried. Runs before the gate, which judges the payouts too.

    The balance scan is skipped when no posting was made since the last committed run paid
    out every balance at or over a minimum no lower than this one, and no payout was refused
    since: no balance can qualify. Only runs (under the lock) and refusals write postings; a
    refusal's reversal may take an id below the last run's high-water mark and commit after
    its snapshot, so refusals are looked for by time, with an hour's margin for a refusal's
    transaction that began before that run and committed after it.
    """
    last = conn.execute(
        "SELECT (figures->>'ledger_high_water')::bigint, (params->>'minimum_payout_cents')::bigint, "
        "       EXISTS (SELECT 1 FROM csl_ops.payouts po WHERE po.status = 'failed' "
        "               AND po.updated_at >= r.started_at - interval '1 hour') "
        "FROM csl_ops.settlement_runs r WHERE status = 'committed' ORDER BY id DESC LIMIT 1").fetchone()
    high_water = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
    if last and last[0] is not None and last[0] == high_water and last[1] is not None and not last[2] \
            and max(int(values["minimum"]), 1) >= max(last[1], 1):
        values["ledger_high_water"] = high_water
        return []
    for statement in statements(load("settlement/payouts.sql")):
        conn.execute(statement, values)
    values["ledger_high_water"] = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
    # the licences each covers: csl_ops.payout_licences counted set-wise (its per-line prepaid
    # anti-join costs 3 s at a million lines; a prepaid line always lies in its sale line's range)
    rows = conn.execute(
        "SELECT po.contributor_id::text, po.currency, po.amount_minor, po.idempotency_key, "
        "       coalesce(c.sales - c.prepaid, 0) "
        "FROM csl_ops.payouts po "
        "LEFT JOIN (SELECT r.payout_id, count(*) FILTER (WHERE p.kind = 'sale') AS sales, "
        "                  count(*) FILTER (WHERE p.kind = 'prepaid') AS prepaid "
        "           FROM csl_ops.payout_ranges r JOIN csl_ops.postings p ON p.account_id = r.account_id "
        "                AND p.id > r.from_id AND p.id <= r.through_id AND p.kind IN ('sale', 'prepaid') "
        "                AND p.license_id IS NOT NULL AND p.source_id IS NULL "
        "           WHERE r.payout_id IN (SELECT id FROM csl_ops.payouts WHERE run_id = %(run)s) GROUP BY 1) c "
        "       ON c.payout_id = po.id "
        "WHERE po.run_id = %(run)s ORDER BY po.currency, po.contributor_id", {"run": values["run_id"]}).fetchall()
    return [{"contributor_id": c, "currency": cur, "amount_minor": int(a), "idempotency_key": k, "licences": int(n)}
            for c, cur, a, k, n in rows]


# -- reading the ledger -----------------------------------------------------------------------
def balances(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    """Each contributor's payable balance per currency (positive: owed to them)."""
    rows = conn.execute(
        "SELECT a.contributor_id::text, a.currency, -sum(p.amount_minor) FROM csl_ops.ledger_accounts a "
        "JOIN csl_ops.postings p ON p.account_id = a.id WHERE a.kind = 'contributor_payable' GROUP BY 1, 2").fetchall()
    return {(c, cur): int(b) for c, cur, b in rows}


def ledger_fingerprint(conn: psycopg.Connection) -> str:
    """A hash over every posting's business content (not ids or times): equal ledgers, equal hashes."""
    digest = hashlib.sha256()
    with conn.cursor(name="ledger_fingerprint") if not conn.autocommit else conn.cursor() as cur:
        # line postings only (their keys are business identities); entry totals follow from them
        cur.execute("SELECT p.kind, p.license_id::text, p.source_id, a.kind, a.contributor_id::text, "
                    "a.currency, p.amount_minor, e.kind FROM csl_ops.postings p "
                    "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
                    "JOIN csl_ops.journal_entries e ON e.id = p.entry_id "
                    "WHERE p.license_id IS NOT NULL OR p.source_id IS NOT NULL "
                    "ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST, 4, 5 NULLS FIRST, 6, 7")
        for row in cur:
            digest.update(repr(row).encode())
    return digest.hexdigest()


# -- payouts: sending instructions (Stripe Connect transfer semantics) ------------------------
class PayoutSender:
    """Sends payouts as transfers to an HTTP endpoint with Stripe's request shape (``POST
    /v1/transfers``, form-encoded, ``Idempotency-Key`` header) and applies the answer.

    Every attempt first marks the payout ``sent`` in a committed transaction, so a crash
    between the call and its answer can only leave an unknown outcome, never an unsent look:

    - a transfer object confirms the payout and marks exactly the ``revenue_splits`` of the
      licences it covers ``paid``;
    - a refusal (4xx other than 409/429 or an idempotency error) fails it: the amount returns
      to the contributor's balance and its licences are released for the next payout;
    - anything else (network error, 409, 429, 5xx) leaves it ``sent``: the next send repeats
      the request with the same idempotency key while the key's window lasts
      (``idempotency_window_s`` after its first use); past it, the transfer is looked up
      (``GET /v1/transfers`` by transfer group and destination, matched on our metadata)
      and, when none is found, the payout is set to ``needs_review`` — never sent blindly.
    """

    def __init__(self, *, endpoint: str, api_key: str, transport: Any = None, timeout_s: float = 20.0,
                 destinations: Mapping[str, str] | None = None,
                 idempotency_window_s: float = IDEMPOTENCY_WINDOW_S) -> None:
        import httpx

        self._client = httpx.Client(base_url=endpoint.rstrip("/"), transport=transport, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_key}"})
        self._destinations = destinations or {}
        self._window_s = idempotency_window_s

    def close(self) -> None:
        self._client.close()

    def destination(self, conn: psycopg.Connection, contributor_id: str) -> str:
        if contributor_id in self._destinations:
            return self._destinations[contributor_id]
        row = conn.execute("SELECT stripe_customer_id FROM users WHERE id = %s", (contributor_id,)).fetchone()
        return (row and row[0]) or f"acct_csl_{str(contributor_id).replace('-', '')[:16]}"

    def send(self, conn: psycopg.Connection, *, limit: int = 1000) -> dict[str, Any]:
        """Send (or look up) every payout not yet settled; returns counts by outcome and the
        errors. ``conn`` must be autocommit: each payout's steps commit on their own."""
        if not conn.autocommit:
            raise SettlementError("PayoutSender.send needs an autocommit connection (each step commits on its own)")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (SEND_LOCK_KEY,)).fetchone()[0]:
            raise SettlementBusy("another payout sender is running; not sending twice")
        try:
            pending = conn.execute(
                "SELECT id, contributor_id::text, currency, amount_minor, idempotency_key, run_id, status, "
                "       first_sent_at IS NOT NULL AND now() - first_sent_at > make_interval(secs => %s) "
                "FROM csl_ops.payouts WHERE status IN ('instructed', 'sent') ORDER BY id LIMIT %s",
                (self._window_s, limit)).fetchall()
            counts = {"confirmed": 0, "failed": 0, "retry_later": 0, "needs_review": 0, "looked_up": 0}
            errors: list[dict[str, Any]] = []
            for payout_id, contributor, currency, amount, key, run_id, status, window_passed in pending:
                payout = _Payout(payout_id, contributor, currency, int(amount), key, run_id,
                                 self.destination(conn, contributor))
                if status == "sent" and window_passed:
                    counts["looked_up"] += 1
                    outcome, error = self._look_up(conn, payout)
                else:
                    outcome, error = self._post(conn, payout)
                counts[outcome] += 1
                if error:
                    errors.append({"payout_id": payout_id, "outcome": outcome, **error})
            return {**counts, "errors": errors}
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SEND_LOCK_KEY,))

    def _post(self, conn: psycopg.Connection, payout: _Payout) -> tuple[str, dict[str, Any] | None]:
        import httpx

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
        try:
            response = self._client.post("/v1/transfers", data=form, headers={"Idempotency-Key": payout.key})
        except httpx.HTTPError as exc:
            return "retry_later", {"error": f"{type(exc).__name__}: {exc}"}
        body = _json_or_none(response)
        if response.status_code == 200 and body and body.get("object") == "transfer":
            return self._apply_transfer(conn, payout, body)
        error_type = ((body or {}).get("error") or {}).get("type")
        if (response.status_code in (409, 429) or response.status_code >= 500 or response.status_code < 400
                or error_type == "idempotency_error"):
            # outcome unknown (or a conflict on our own key): the same key is sent again next time
            return "retry_later", {"status": response.status_code, "error": _stripe_error(response)}
        self._fail(conn, payout, _stripe_error(response))
        return "failed", {"status": response.status_code, "error": _stripe_error(response)}

    def _look_up(self, conn: psycopg.Connection, payout: _Payout) -> tuple[str, dict[str, Any] | None]:
        """The outcome of a payout sent long ago: its transfer, by our metadata, in the list of
        transfers of its group to its destination (every page)."""
        import httpx

        query: dict[str, Any] = {"transfer_group": payout.transfer_group, "destination": payout.destination,
                                 "limit": 100}
        try:
            while True:
                response = self._client.get("/v1/transfers", params=query)
                body = _json_or_none(response)
                if response.status_code != 200 or not body or body.get("object") != "list":
                    return "retry_later", {"status": response.status_code,
                                           "error": "transfer lookup failed: " + _stripe_error(response)}
                for transfer in body.get("data", []):
                    metadata = transfer.get("metadata") or {}
                    if metadata.get("idempotency_key") == payout.key or metadata.get("payout_id") == str(payout.id):
                        return self._apply_transfer(conn, payout, transfer)
                if not body.get("has_more") or not body.get("data"):
                    break
                query["starting_after"] = body["data"][-1]["id"]
        except httpx.HTTPError as exc:
            return "retry_later", {"error": f"transfer lookup failed: {type(exc).__name__}: {exc}"}
        reason = (f"outcome unknown past the {self._window_s / 3600:g} h idempotency window and no transfer found "
                  f"in group {payout.transfer_group} to {payout.destination}: resending could pay twice; review it")
        self._set_needs_review(conn, payout, reason)
        return "needs_review", {"error": reason}

    def _apply_transfer(self, conn: psycopg.Connection, payout: _Payout,
                        transfer: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
        if (transfer.get("amount") != payout.amount or str(transfer.get("currency", "")).lower() != payout.currency
                or transfer.get("reversed")):
            reason = (f"transfer {transfer.get('id')} does not match the payout (amount {transfer.get('amount')} "
                      f"{transfer.get('currency')}, reversed={transfer.get('reversed')}; expected {payout.amount} "
                      f"{payout.currency})")
            self._set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        self._confirm(conn, payout, str(transfer["id"]))
        return "confirmed", None

    @staticmethod
    def _confirm(conn: psycopg.Connection, payout: _Payout, transfer_id: str, *, from_status: str = "sent") -> bool:
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

    @staticmethod
    def _set_needs_review(conn: psycopg.Connection, payout: _Payout, reason: str) -> None:
        with conn.transaction():
            conn.execute("UPDATE csl_ops.payouts SET status = 'needs_review', error = %s, updated_at = now() "
                         "WHERE id = %s AND status = 'sent'", (reason, payout.id))
        log.error("payout %s (%s %s to %s) needs review: %s", payout.id, payout.amount, payout.currency,
                  payout.contributor, reason)

    @staticmethod
    def _fail(conn: psycopg.Connection, payout: _Payout, error: str, *, from_status: str = "sent") -> bool:
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
                                  f"payout {payout.id} refused: amount back to the balance")).fetchone()[0]
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
                  not_paid: str | None = None) -> dict[str, Any]:
    """Resolve a payout in ``needs_review`` after a person has checked the provider's records:

    - ``transfer_id``: the transfer exists (found in the dashboard): the payout is confirmed with
      it and the licences it covers become ``paid``;
    - ``not_paid`` (the reason, for the record): no transfer was made: the payout fails, its amount
      returns to the contributor's balance and its licences are released, so the next run pays
      them under a new payout (a new idempotency key: never a blind resend of the old one).
    """
    if (transfer_id is None) == (not_paid is None):
        raise SettlementParamsError("review_payout: give exactly one of transfer_id (it was paid) or not_paid (reason)")
    if transfer_id is not None and not re.fullmatch(r"tr_[A-Za-z0-9]+", transfer_id):
        raise SettlementParamsError(f"review_payout: {transfer_id!r} is not a transfer id (tr_…)")
    row = conn.execute("SELECT id, contributor_id::text, currency, amount_minor, idempotency_key, run_id, status "
                       "FROM csl_ops.payouts WHERE id = %s", (payout_id,)).fetchone()
    if row is None:
        raise SettlementParamsError(f"review_payout: no payout {payout_id}")
    if row[6] != "needs_review":
        raise SettlementError(f"payout {payout_id} is {row[6]!r}, not 'needs_review': nothing to resolve")
    payout = _Payout(row[0], row[1], row[2], int(row[3]), row[4], row[5], destination="")
    if transfer_id is not None:
        done = PayoutSender._confirm(conn, payout, transfer_id, from_status="needs_review")
        outcome = "confirmed"
    else:
        done = PayoutSender._fail(conn, payout, f"reviewed: not paid: {not_paid}", from_status="needs_review")
        outcome = "failed"
    if not done:
        raise SettlementError(f"payout {payout_id} changed state during the review; look again")
    log.warning("payout %s reviewed: %s (%s)", payout_id, outcome, transfer_id or not_paid)
    return {"payout_id": payout_id, "status": outcome, "amount_minor": payout.amount, "currency": payout.currency,
            "contributor_id": payout.contributor, "transfer_id": transfer_id}


@dataclass(frozen=True)
class _Payout:
    id: int
    contributor: str
    currency: str
    amount: int
    key: str
    run_id: int
    destination: str

    @property
    def transfer_group(self) -> str:
        return f"csl-settlement-{self.run_id}"



def _json_or_none(response: Any) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _stripe_error(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error.get('type', 'error')}/{error.get('code', '-')}: {error.get('message', response.text[:200])}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


# -- statements for data teams ------------------------------------------------------------------
_STATEMENT = """
SELECT a.contributor_id::text AS contributor_id, a.currency, e.kind AS entry_kind, p.license_id::text AS license_id,
       p.source_id, -p.amount_minor AS amount_minor, e.created_at AS posted_at, e.run_id
FROM csl_ops.postings p
JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'contributor_payable'
JOIN csl_ops.journal_entries e ON e.id = p.entry_id
WHERE (%(contributor)s::uuid IS NULL OR a.contributor_id = %(contributor)s::uuid)
ORDER BY a.contributor_id, a.currency, p.id
"""


def write_statement(conn: psycopg.Connection, out, *, contributor: str | None = None) -> int:
    """Per-contributor statement CSV (every posting with a running balance); returns rows written."""
    import csv

    writer = csv.writer(out)
    writer.writerow(["contributor_id", "currency", "entry_kind", "license_id", "source_id", "amount_minor",
                     "balance_minor", "posted_at", "run_id"])
    rows = 0
    balance: dict[tuple[str, str], int] = defaultdict(int)
    with conn.cursor() as cur:
        cur.execute(_STATEMENT, {"contributor": contributor})
        for contributor_id, currency, kind, license_id, source_id, amount, posted_at, run_id in cur:
            balance[(contributor_id, currency)] += amount
            writer.writerow([contributor_id, currency, kind, license_id or "", source_id or "", amount,
                             balance[(contributor_id, currency)], posted_at.isoformat(), run_id])
            rows += 1
    return rows
