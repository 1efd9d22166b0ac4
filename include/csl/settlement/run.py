"""The settlement run: one snapshot under an advisory lock → allocate → post → claw back →
audit the platform's splits → instruct payouts → the gate; all or nothing."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import psycopg

from csl.settlement.arithmetic import _clawback_parts
from csl.settlement.errors import GateFailed, SettlementBusy, SettlementError, SettlementParamsError, SettlementRace
from csl.settlement.gate import _GateLibraries, _record_failed_gate, _small, run_gate
from csl.settlement.params import Params
from csl.settlement.results import SettlementOutcome
from csl.sqlfiles import load, statements

log = logging.getLogger("csl.settlement")

LOCK_KEY = 0x63736C5F736574  # "csl_set"
WORK_MEM = "256MB"  # per hash or sort of the run's one backend (SET LOCAL: this transaction only)
# a backend whose client died (a SIGKILLed worker) notices within this while it runs a query, and
# ends, releasing the settlement lock, so Airflow's retry is not refused as "busy"
CLIENT_CHECK_S = 2
# the revenue_splits key the index catalog builds once the platform's duplicates are gone
SPLITS_KEY_COLUMNS = ("license_id", "contributor_id")

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


def settle(conn: psycopg.Connection, params: Params, *, run_key: str) -> SettlementOutcome:
    """One settlement run, all or nothing. ``conn`` must be an autocommit connection.

    Returns the run's figures (a run key settled before: the figures it recorded); raises ``GateFailed`` (after recording the findings and the
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
            return SettlementOutcome.of(previous[2], status="already committed", run_id=previous[0])
        return _settle(conn, params, run_key)
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            conn.execute("RESET client_connection_check_interval")
        except psycopg.OperationalError:  # the connection is gone, and the session lock with it
            pass


def _settle(conn: psycopg.Connection, params: Params, run_key: str) -> SettlementOutcome:
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
                outcome=SettlementOutcome.of(outcome, status="gate_failed")) from None
        return SettlementOutcome.of(outcome, status="dry_run")
    log.info("settlement %s: %s licences, %s clawbacks, %s payouts, %s held", run_key, outcome["licences"],
             outcome["clawbacks"]["refunds"], len(outcome["payouts"]), len(outcome["payout_holds"]))
    return SettlementOutcome.of(outcome, status="committed")


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
