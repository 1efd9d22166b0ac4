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
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg

from csl.errors import ConfigError, CslError
from csl.money import SubUnitAmount, from_minor, to_minor
from csl.sqlfiles import load, statements

__all__ = [
    "GATE_CHECKS",
    "IDEMPOTENCY_WINDOW_S",
    "GateFailed",
    "Params",
    "PayoutConfigError",
    "PayoutProviderUnavailable",
    "PayoutSender",
    "SettlementBusy",
    "SettlementError",
    "SettlementParamsError",
    "SettlementRace",
    "SubUnitAmount",
    "allocate",
    "balances",
    "classify_answer",
    "ledger_fingerprint",
    "parse_period",
    "payout_endpoint",
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
# a backend whose client died (a SIGKILLed worker) notices within this while it runs a query, and
# ends, releasing the settlement lock, so Airflow's retry is not refused as "busy"
CLIENT_CHECK_S = 2
GATE_CHECKS = ("postings_reference_entries_and_accounts", "entries_balance", "allocations_sum_to_price", "no_due_licence_left", "platform_rows_round_trip",
               "no_duplicate_splits", "findings", "payouts_clear_balances", "payouts_pay_verified_accounts",
               "payout_ranges_are_disjoint", "clawbacks_match_refunds", "clawbacks_within_allocation",
               "clawbacks_proportional")
# the revenue_splits key the index catalog builds once the platform's duplicates are gone
SPLITS_KEY_COLUMNS = ("license_id", "contributor_id")


class SettlementError(CslError):
    """The settlement cannot run as asked (bad parameter, inconsistent data)."""


class SettlementParamsError(SettlementError, ValueError):
    """A settlement parameter is out of range; nothing was read or written."""


class SettlementBusy(SettlementError):
    """Another settlement run holds the lock."""


class SettlementRace(SettlementError):
    """The old platform wrote a split this run was writing (the unique split key refused ours): the
    run was rolled back; a retry reconciles the platform's row."""


class PayoutProviderUnavailable(SettlementError):
    """The payment provider cannot be reached or answered unreadably before anything was sent."""


class GateFailed(SettlementError):
    """The data-quality gate failed: the run was rolled back; findings and the validation are kept."""

    def __init__(self, message: str, *, outcome: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcome = outcome


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


# -- the arithmetic (property-tested; the SQL in include/sql/settlement/ follows the same rules) --
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
    if not run_key or len(run_key) > 250 or not run_key.isprintable():
        raise SettlementParamsError(f"run_key: expected 1..250 printable characters, got {run_key[:40]!r}")
    # for the session, before the lock: a client that dies mid-query is noticed and its backend ends
    conn.execute(f"SET client_connection_check_interval = '{CLIENT_CHECK_S}s'")
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
            conn.execute("RESET client_connection_check_interval")
        except psycopg.OperationalError:  # the connection is gone, and the session lock with it
            pass


def _settle(conn: psycopg.Connection, params: Params, run_key: str) -> dict[str, Any]:
    installation = conn.execute("SELECT id::text FROM csl_ops.installation").fetchone()[0]
    values = {"share_bps": params.share_bps, "period_start": params.period_start, "period_end": params.period_end,
              "run_key": run_key, "minimum": params.minimum_payout_cents, "installation": installation}
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
            # generous, but never forever: a statement, a lock wait, or the client going quiet
            # mid-run (a hung worker) ends the run, which rolls back and releases the lock
            conn.execute(f"SET LOCAL statement_timeout = '{int(params.statement_timeout_s)}s'")
            conn.execute(f"SET LOCAL lock_timeout = '{int(params.lock_timeout_s)}s'")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = '10min'")
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
                (run_key, json.dumps(params.as_dict()))).fetchone()[0]
            values["run_id"] = run_id
            values["postings_before"] = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
            for name in ("due", "held", "parts", "reconcile", "post_sales"):
                for statement in statements(load(f"settlement/{name}.sql")):
                    t0 = time.perf_counter()
                    try:
                        conn.execute(statement, values)
                    except psycopg.errors.UniqueViolation as exc:
                        if "INSERT INTO revenue_splits" not in statement:
                            raise
                        raise SettlementRace(
                            "the old platform wrote a revenue split for a licence this run settles while it ran "
                            f"({str(exc).strip().splitlines()[-1][:200]}); nothing was committed: the next run "
                            "reconciles the platform's row") from None
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
            if figures["licences"] + clawbacks["refunds"] + clawbacks["disputes"] >= max(params.analyze_after_rows, 1):
                # the statistics still describe the tables before this run's bulk writes: without
                # fresh ones the payout and gate queries get nested-loop plans that never finish
                timings["analyze_skipped"] = not _analyze(
                    conn, "csl_ops.postings, csl_ops.journal_entries, csl_ops.ledger_accounts, "
                          "csl_ops.settled_licences, revenue_splits", params.lock_timeout_s)
                lap("analyze")
            duplicates = _audit_splits(conn)
            lap("audit")
            payouts = _instruct_payouts(conn, values)
            if len(payouts) >= max(params.analyze_after_rows, 1) // 10:
                _analyze(conn, "csl_ops.payouts, csl_ops.payout_ranges", params.lock_timeout_s)
            holds = _record_holds(conn, run_id, duplicates)
            lap("payouts")
            gate = run_gate(conn, values)
            lap("gate")
            outcome = {"run_id": run_id, "run_key": run_key, **figures, "clawbacks": clawbacks,
                       "findings": _findings(conn, run_id), "gate": gate, "payouts": payouts,
                       "payout_holds": holds, "ledger_high_water": values["ledger_high_water"]}
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
    log.info("settlement %s: %s licences, %s clawbacks, %s payouts, %s held", run_key, outcome["licences"],
             outcome["clawbacks"]["refunds"], len(outcome["payouts"]), len(outcome["payout_holds"]))
    return outcome


def _analyze(conn: psycopg.Connection, tables: str, lock_timeout_s: int) -> bool:
    """ANALYZE inside the run without queueing behind a concurrent index build (which holds the
    same lock level for its whole duration): a lock wait of a second skips it (False)."""
    try:
        with conn.transaction():  # a savepoint: a lock timeout leaves the run intact
            conn.execute("SET LOCAL lock_timeout = '1s'")
            conn.execute(f"ANALYZE {tables}")  # constant table names
            conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s)}s'")
        return True
    except psycopg.errors.LockNotAvailable:
        log.warning("ANALYZE %s skipped: a table is locked (an index build?); the run goes on with older "
                    "statistics", tables)
        return False


_SPLITS_KEY = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = 'revenue_splits'::regclass AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
      AND i.indnkeyatts = cardinality(%(columns)s::text[])
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::smallint[]))
          = (SELECT array_agg(c ORDER BY c) FROM unnest(%(columns)s::text[]) c))
"""


def _audit_splits(conn: psycopg.Connection) -> dict[str, list[str]]:
    """The nightly audit of the platform's splits: licence × contributor pairs with more than one
    ``revenue_splits`` row among all settled licences (the old platform inserted one while a run
    was under way), by contributor. Their payouts are held. Once the unique key exists
    (``revenue_splits_license_contributor_key``, built through the index catalog) no duplicate
    can exist, and the scan is skipped."""
    conn.execute("CREATE TEMP TABLE split_duplicates (license_id uuid, contributor_id uuid, rows bigint) ON COMMIT DROP")
    if conn.execute(_SPLITS_KEY, {"columns": list(SPLITS_KEY_COLUMNS)}).fetchone()[0]:
        return {}
    conn.execute("INSERT INTO split_duplicates SELECT rs.license_id, rs.contributor_id, count(*) FROM revenue_splits rs "
                 "WHERE EXISTS (SELECT 1 FROM csl_ops.settled_licences sl WHERE sl.license_id = rs.license_id) "
                 "GROUP BY 1, 2 HAVING count(*) > 1")
    found: dict[str, list[str]] = defaultdict(list)
    for contributor, license_id in conn.execute(
            "SELECT contributor_id::text, license_id::text FROM split_duplicates ORDER BY 1, 2").fetchall():
        found[contributor].append(license_id)
    return dict(found)


def _record_holds(conn: psycopg.Connection, run_id: int, duplicates: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """Balances the run did not pay out although they reached the minimum, as findings that do not
    fail the gate (the balance is carried): no verified payout account, or duplicate platform splits."""
    holds = [{"contributor_id": c, "currency": cur, "balance_minor": int(b), "reason": reason}
             for c, cur, b, reason in conn.execute(
                 "SELECT contributor_id::text, currency, balance, hold FROM payout_holds ORDER BY 1, 2").fetchall()]
    rows = []
    for h in holds:
        detail: dict[str, Any] = {"balance_minor": h["balance_minor"]}
        if h["reason"] == "duplicate_splits":
            pairs = duplicates.get(h["contributor_id"], [])
            detail.update(licences_with_duplicates=len(pairs), sample=pairs[:20])
        rows.append((run_id, h["reason"], h["contributor_id"], h["currency"], json.dumps(detail)))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO csl_ops.settlement_findings (run_id, kind, contributor_id, currency, detail, "
                        "blocking) VALUES (%s, %s, %s, %s, %s, false)", rows)
    if holds:
        by_reason: dict[str, int] = defaultdict(int)
        for h in holds:
            by_reason[h["reason"]] += 1
        log.warning("%d balance(s) at or over the minimum held, carried to the next run: %s", len(holds),
                    dict(by_reason))
    return holds


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


# Money that went back to the buyer after settlement and is not clawed back yet (a clawback's lines
# are keyed by the source id): succeeded refunds, and disputes the platform lost (chargebacks). A
# dispute names a charge: the payment intent's own id, or the intent's latest charge (metadata).
# Amounts in the settled licence's minor units (csl_ops.minor_units with its currency's exponent).
_NEW_REVERSALS = """
WITH fresh_refunds AS MATERIALIZED (
    SELECT r.id, r.amount, lower(r.currency) AS currency, r.payment_intent_id, r.created_at FROM refunds r
    WHERE r.status = 'succeeded'
      AND NOT EXISTS (SELECT 1 FROM csl_ops.postings p WHERE p.source_id = r.id AND p.kind = 'clawback')
), fresh_disputes AS MATERIALIZED (
    SELECT d.id, d.amount, lower(d.currency) AS currency, d.charge_id, d.created_at FROM disputes d
    WHERE d.status = 'lost'
      AND NOT EXISTS (SELECT 1 FROM csl_ops.postings p WHERE p.source_id = d.id AND p.kind = 'clawback')
), dispute_intents AS MATERIALIZED (
    SELECT fd.id, pi.id AS payment_intent_id FROM fresh_disputes fd JOIN payment_intents pi ON pi.id = fd.charge_id
    UNION
    SELECT fd.id, pi.id FROM fresh_disputes fd JOIN payment_intents pi ON pi.metadata->>'latest_charge' = fd.charge_id
), sources AS (
    SELECT 'refund' AS source, id, amount, currency, payment_intent_id, NULL::text AS charge_id, created_at,
           1::bigint AS intents
    FROM fresh_refunds
    UNION ALL
    SELECT 'dispute', fd.id, fd.amount, fd.currency, di.payment_intent_id, fd.charge_id, fd.created_at,
           (SELECT count(*) FROM dispute_intents x WHERE x.id = fd.id)
    FROM fresh_disputes fd LEFT JOIN dispute_intents di ON di.id = fd.id
)
SELECT s.source, s.id, s.amount, csl_ops.minor_units(s.amount, c.exponent), s.currency, s.charge_id, s.intents,
       sl.license_id, sl.currency, sl.price_minor,
       (SELECT count(*) FROM licenses l2 WHERE l2.payment_intent_id = s.payment_intent_id) AS licences_on_intent
FROM sources s
LEFT JOIN csl_ops.settled_licences sl ON sl.payment_intent_id = s.payment_intent_id
LEFT JOIN csl_ops.currencies c ON c.code = sl.currency
WHERE sl.license_id IS NOT NULL OR (s.source = 'dispute' AND s.payment_intent_id IS NULL)
ORDER BY sl.license_id NULLS FIRST, s.created_at, s.id
"""


def _post_clawbacks(conn: psycopg.Connection, run_id: int, run_key: str) -> dict[str, Any]:
    """Refunds and lost disputes of settled licences not yet clawed back: exact, cumulative, per
    contributor. What cannot be attributed to one licence, in its currency and within its price,
    is held as a finding (a dispute on a charge no payment intent knows, a payment intent shared by
    several licences, an amount below the minor unit)."""
    new = conn.execute(_NEW_REVERSALS).fetchall()
    if not new:
        return {"refunds": 0, "disputes": 0, "contributors_minor": 0}
    licences = sorted({r[7] for r in new if r[7] is not None})
    parts: dict[Any, dict[str, int]] = defaultdict(dict)
    for license_id, contributor, amount in conn.execute(
            "SELECT p.license_id, a.contributor_id::text, -p.amount_minor FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id "
            "WHERE p.license_id = ANY(%s) AND p.kind = 'sale' AND p.source_id IS NULL", (licences,)).fetchall():
        parts[license_id][contributor] = amount
    reversed_before: dict[Any, int] = defaultdict(int)
    for license_id, total in conn.execute(
            "SELECT p.license_id, sum(p.amount_minor) FROM csl_ops.postings p "
            "JOIN csl_ops.ledger_accounts a ON a.id = p.account_id AND a.kind = 'clearing' "
            "WHERE p.license_id = ANY(%s) AND p.kind = 'clawback' GROUP BY 1", (licences,)).fetchall():
        reversed_before[license_id] = -int(total)
    rows: list[tuple[str, str | None, str, int, Any, str]] = []  # (account kind, contributor, currency, amount, licence, source)
    held = []
    clawed: dict[str, set[str]] = {"refund": set(), "dispute": set()}
    total_contributors = 0
    for (source, source_id, amount, minor, source_currency, charge, intents, license_id, currency, price_minor,
         on_intent) in new:
        what = {f"{source}_id": source_id}
        if source == "dispute" and license_id is None:
            held.append((None, "dispute_unmatched", {**what, "charge_id": charge, "amount": repr(amount)}))
            continue
        if intents != 1:
            held.append((license_id, "dispute_ambiguous_charge", {**what, "charge_id": charge, "intents": intents}))
            continue
        if on_intent != 1:
            held.append((license_id, f"{source}_ambiguous_licence", {**what, "licences_on_intent": on_intent}))
            continue
        if source_currency != currency:
            held.append((license_id, f"{source}_currency_mismatch", {**what, "currency": source_currency}))
            continue
        reversal = int(minor) if minor is not None and minor.is_finite() and minor == minor.to_integral_value() \
            else None  # csl_ops.minor_units: the same conversion as prices
        if reversal is None:
            held.append((license_id, f"{source}_sub_unit", {**what, "amount": repr(amount), "currency": currency}))
            continue
        if reversal <= 0 or reversed_before[license_id] + reversal > price_minor:
            held.append((license_id, f"{source}_exceeds_price", {**what, "amount_minor": reversal,
                                                                 "reversed_before": reversed_before[license_id],
                                                                 "price_minor": price_minor}))
            continue
        claw = _clawback_parts(parts.get(license_id, {}), price_minor, reversed_before[license_id], reversal)
        reversed_before[license_id] += reversal
        clawed[source].add(source_id)
        contributors = sum(claw.values())
        total_contributors += contributors
        for contributor, value in claw.items():
            if value:
                rows.append(("contributor_payable", contributor, currency, value, license_id, source_id))
        if reversal - contributors:
            rows.append(("platform_revenue", None, currency, reversal - contributors, license_id, source_id))
        rows.append(("clearing", None, currency, -reversal, license_id, source_id))
    for license_id, kind, detail in held:
        conn.execute("INSERT INTO held VALUES (%s, %s, %s)", (license_id, kind, json.dumps(detail, default=str)))
    counts = {"refunds": len(clawed["refund"]), "disputes": len(clawed["dispute"]), "held": len(held)}
    if not rows:
        return {**counts, "contributors_minor": 0}
    entries = {}
    for currency in sorted({r[2] for r in rows}):
        entries[currency] = conn.execute(
            "INSERT INTO csl_ops.journal_entries (run_id, kind, currency, memo) VALUES (%s, 'clawback', %s, %s) "
            "RETURNING id", (run_id, currency, f"refund and chargeback clawbacks by run {run_key}")).fetchone()[0]
    accounts = sorted({(r[0], r[1], r[2]) for r in rows}, key=str)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO csl_ops.ledger_accounts (kind, contributor_id, currency) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            accounts)
    account_ids = {(kind, contributor, currency): account_id for account_id, kind, contributor, currency in conn.execute(
        "SELECT id, kind, contributor_id::text, currency FROM csl_ops.ledger_accounts "
        "WHERE currency = ANY(%s)", (sorted({r[2] for r in rows}),)).fetchall()}
    columns = list(zip(*[(entries[cur], account_ids[(kind, contributor, cur)], amount, license_id, source_id)
                         for kind, contributor, cur, amount, license_id, source_id in rows], strict=True))
    conn.execute(  # one set-based insert, not a statement per posting
        "INSERT INTO csl_ops.postings (entry_id, account_id, amount_minor, license_id, source_id, kind) "
        "SELECT * , 'clawback' FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::uuid[], %s::text[])",
        [list(c) for c in columns])
    return {**counts, "contributors_minor": total_contributors}


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
        except Exception:
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
            (run_key, json.dumps(params.as_dict()), json.dumps(_small(outcome), default=str),
             json.dumps(outcome["gate"], default=str))).fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO csl_ops.settlement_findings (run_id, kind, license_id, detail) VALUES (%s, %s, %s, %s)",
                            [(run_id, f["kind"], f["license_id"], json.dumps(f["detail"], default=str))
                             for f in outcome.get("findings", [])])


def _instruct_payouts(conn: psycopg.Connection, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Balances at or over the minimum become payout instructions (with the licences each
    covers and the account each pays); the rest is carried. Runs before the gate, which judges
    the payouts too.

    The balance scan is skipped when no posting was made since the last committed run paid
    out every balance at or over a minimum no lower than this one, held none (a held balance may
    be payable now: its contributor's account verified, its duplicates removed), and no payout
    was refused since: no balance can qualify. Only runs (under the lock) and refusals write
    postings; a refusal's reversal may take an id below the last run's high-water mark and
    commit after its snapshot, so refusals are looked for by time, with an hour's margin for a
    refusal's transaction that began before that run and committed after it.
    """
    last = conn.execute(
        "SELECT (figures->>'ledger_high_water')::bigint, (params->>'minimum_payout_cents')::bigint, "
        "       EXISTS (SELECT 1 FROM csl_ops.payouts po WHERE po.status = 'failed' "
        "               AND po.updated_at >= r.started_at - interval '1 hour') "
        "       OR EXISTS (SELECT 1 FROM csl_ops.settlement_findings f WHERE f.run_id = r.id AND NOT f.blocking) "
        "FROM csl_ops.settlement_runs r WHERE status = 'committed' ORDER BY id DESC LIMIT 1").fetchone()
    high_water = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
    if last and last[0] is not None and last[0] == high_water and last[1] is not None and not last[2] \
            and max(int(values["minimum"]), 1) >= max(last[1], 1):
        values["ledger_high_water"] = high_water
        conn.execute("CREATE TEMP TABLE payout_holds (contributor_id uuid, currency text, balance bigint, hold text) "
                     "ON COMMIT DROP")
        return []
    for statement in statements(load("settlement/payouts.sql")):
        conn.execute(statement, values)
    values["ledger_high_water"] = conn.execute("SELECT coalesce(max(id), 0) FROM csl_ops.postings").fetchone()[0]
    # the licences each covers: csl_ops.payout_licences counted set-wise (its per-line prepaid
    # anti-join costs 3 s at a million lines; a prepaid line always lies in its sale line's range)
    rows = conn.execute(
        "SELECT po.contributor_id::text, po.currency, po.amount_minor, po.idempotency_key, po.destination, "
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
    return [{"contributor_id": c, "currency": cur, "amount_minor": int(a), "idempotency_key": k, "destination": d,
             "licences": int(n)} for c, cur, a, k, d, n in rows]


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
# The provider's own error objects say a request was refused; anything else may have been processed.
_REFUSAL_TYPES = frozenset({"invalid_request_error", "card_error"})


def payout_endpoint(endpoint: str) -> str:
    """The payment provider's base URL: https, or http only on loopback (a local test server);
    no credentials, query or fragment in it. ``ConfigError`` otherwise, before anything is sent."""
    parts = urlsplit(endpoint or "")
    shown = f"{parts.scheme}://{parts.hostname}" if parts.hostname else repr((endpoint or "")[:60])
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError("payout endpoint", f"expected an https://host[:port] URL, got {shown}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("payout endpoint", f"no credentials, query or fragment in the URL ({shown}): "
                                             "the API key goes in the connection's password")
    if parts.scheme == "http":
        try:
            loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError("payout endpoint", f"http:// only on loopback (a local test server), got {shown}: "
                                                 "use https:// for a remote payment provider")
    return endpoint.rstrip("/")


def classify_answer(status: int, body: Mapping[str, Any] | None) -> str:
    """What a payment provider's answer to a transfer says happened:

    - ``transfer``: it was made (the body is the transfer);
    - ``unauthorized``: 401/403, the API key is wrong: nothing was processed, stop sending;
    - ``refused``: a 4xx with the provider's own error object (``invalid_request_error``,
      ``card_error``): it was not made;
    - ``unknown``: anything else (408, 409, 429, 5xx, a 4xx without a provider error body, e.g. from
      a proxy, an idempotency error, a 200 that is not a transfer): it may have been made; the same
      idempotency key is sent again, or the transfer looked up.
    """
    if status == 200 and body and body.get("object") == "transfer":
        return "transfer"
    if status in (401, 403):
        return "unauthorized"
    error = body.get("error") if isinstance(body, Mapping) else None
    if 400 <= status < 500 and status not in (408, 409, 429) and isinstance(error, Mapping) \
            and error.get("type") in _REFUSAL_TYPES:
        return "refused"
    return "unknown"


class PayoutConfigError(ConfigError):
    """The payment provider refused our credentials (401/403): nothing more is sent."""

    def __init__(self, problem: str, *, counts: Mapping[str, Any] | None = None) -> None:
        super().__init__("payout API key", problem)
        self.counts = dict(counts or {})


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
        import httpx

        if not api_key:
            raise ConfigError("payout API key", "not set (the csl_payouts connection's password)")
        self._client = httpx.Client(base_url=payout_endpoint(endpoint), transport=transport, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_key}"})
        self._window_s = idempotency_window_s

    def close(self) -> None:
        self._client.close()

    def _check_key(self) -> None:
        import httpx

        try:
            response = self._client.get("/v1/balance")
        except httpx.HTTPError as exc:
            raise PayoutProviderUnavailable(f"payment provider unreachable ({type(exc).__name__}); nothing sent") from exc
        body = _json_or_none(response)
        if response.status_code in (401, 403):
            raise PayoutConfigError(f"refused by the payment provider (HTTP {response.status_code}: "
                                    f"{_stripe_error(response)}); nothing sent")
        if response.status_code != 200 or not body or body.get("object") != "balance":
            raise PayoutProviderUnavailable(f"payment provider answered the key check with HTTP {response.status_code} "
                                            f"({_stripe_error(response)}); nothing sent")

    def send(self, conn: psycopg.Connection, *, limit: int = 1000) -> dict[str, Any]:
        """Send (or look up) every payout not yet settled; returns counts by outcome and the
        errors. ``conn`` must be autocommit: each payout's steps commit on their own."""
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
                self._check_key()
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
            return {**counts, "errors": errors}
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SEND_LOCK_KEY,))

    def _attempt(self, conn: psycopg.Connection, payout: _Payout, status: str) -> tuple[str, dict[str, Any] | None]:
        """The checks before money moves, then the transfer."""
        if payout.destination is None:  # instructed before destinations were recorded (migration 0011)
            if status == "instructed":  # never sent: released, the next run instructs it to a verified account
                reason = ("instructed before payout destinations were recorded: released, the next run pays the "
                          "balance to the contributor's verified account")
                self._fail(conn, payout, reason, from_status="instructed")
                return "failed", {"error": reason}
            reason = "sent before payout destinations were recorded (to a guessed account): check the provider"
            self._set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        paid_elsewhere, duplicated = conn.execute(_DOUBLE_PAY, {"payout": payout.id,
                                                                "contributor": payout.contributor}).fetchone()
        if paid_elsewhere or duplicated:
            reason = (f"not sent: {paid_elsewhere} of its licences were marked paid outside this ledger, "
                      f"{duplicated} licence(s) of the contributor have duplicate platform splits; sending could pay "
                      "twice (resolve with review-payout once the platform's records are checked)")
            self._set_needs_review(conn, payout, reason)
            return "needs_review", {"error": reason}
        return self._post(conn, payout)

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
        answer = classify_answer(response.status_code, body)
        if answer == "transfer":
            return self._apply_transfer(conn, payout, body)
        if answer == "unauthorized":  # not processed: the payout stays 'sent' and is repeated with its key
            raise PayoutConfigError(f"refused by the payment provider while sending payout {payout.id} "
                                    f"(HTTP {response.status_code}: {_stripe_error(response)}); sending stopped")
        if answer == "refused":
            self._fail(conn, payout, _stripe_error(response))
            return "failed", {"status": response.status_code, "error": _stripe_error(response)}
        # outcome unknown: the same key is sent again next time (or looked up past the window)
        return "retry_later", {"status": response.status_code, "error": _stripe_error(response)}

    def _look_up(self, conn: psycopg.Connection, payout: _Payout) -> tuple[str, dict[str, Any] | None]:
        """The outcome of a payout sent long ago: its transfer, by its idempotency key (in our
        metadata; local payout ids repeat across environments), among the transfers of its group
        to its destination (every page)."""
        import httpx

        query: dict[str, Any] = {"transfer_group": payout.transfer_group, "limit": 100}
        if payout.destination:
            query["destination"] = payout.destination
        try:
            while True:
                response = self._client.get("/v1/transfers", params=query)
                body = _json_or_none(response)
                if response.status_code in (401, 403):
                    raise PayoutConfigError(f"refused by the payment provider while looking up payout {payout.id} "
                                            f"(HTTP {response.status_code}); sending stopped")
                if response.status_code != 200 or not body or body.get("object") != "list":
                    return "retry_later", {"status": response.status_code,
                                           "error": "transfer lookup failed: " + _stripe_error(response)}
                for transfer in body.get("data", []):
                    if (transfer.get("metadata") or {}).get("idempotency_key") == payout.key:
                        return self._apply_transfer(conn, payout, transfer)
                if not body.get("has_more") or not body.get("data"):
                    break
                query["starting_after"] = body["data"][-1]["id"]
        except httpx.HTTPError as exc:
            return "retry_later", {"error": f"transfer lookup failed: {type(exc).__name__}: {exc}"}
        reason = (f"outcome unknown past the {self._window_s / 3600:g} h idempotency window and no transfer found "
                  f"with its idempotency key in group {payout.transfer_group} to "
                  f"{payout.destination or 'any destination'}: resending could pay twice; review it")
        self._set_needs_review(conn, payout, reason)
        return "needs_review", {"error": reason}

    def _apply_transfer(self, conn: psycopg.Connection, payout: _Payout,
                        transfer: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
        if (transfer.get("amount") != payout.amount or str(transfer.get("currency", "")).lower() != payout.currency
                or transfer.get("reversed")
                or (payout.destination and transfer.get("destination") != payout.destination)):
            reason = (f"transfer {transfer.get('id')} does not match the payout (amount {transfer.get('amount')} "
                      f"{transfer.get('currency')} to {transfer.get('destination')}, reversed={transfer.get('reversed')}; "
                      f"expected {payout.amount} {payout.currency} to {payout.destination})")
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
                         "WHERE id = %s AND status IN ('instructed', 'sent')", (reason, payout.id))
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
    destination: str | None

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
    body = _json_or_none(response)
    error = body.get("error") if body else None
    if isinstance(error, Mapping):
        return f"{error.get('type', 'error')}/{error.get('code', '-')}: {str(error.get('message', ''))[:300]}"
    return f"HTTP {response.status_code}: {response.text[:200]!r}"


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
    """Per-contributor statement CSV (every posting with a running balance, in minor units and in
    the currency's major units as exact decimals; source ids are spreadsheet-safe); returns rows written."""
    import csv

    from csl.csvcells import cell

    writer = csv.writer(out)
    writer.writerow(["contributor_id", "currency", "entry_kind", "license_id", "source_id", "amount_minor",
                     "balance_minor", "amount", "balance", "posted_at", "run_id"])
    rows = 0
    balance: dict[tuple[str, str], int] = defaultdict(int)
    with conn.cursor() as cur:
        cur.execute(_STATEMENT, {"contributor": contributor})
        for contributor_id, currency, kind, license_id, source_id, amount, posted_at, run_id in cur:
            balance[(contributor_id, currency)] += amount
            total = balance[(contributor_id, currency)]
            writer.writerow([contributor_id, currency, kind, license_id or "", cell(source_id or ""), amount, total,
                             from_minor(amount, currency), from_minor(total, currency), posted_at.isoformat(), run_id])
            rows += 1
    return rows
