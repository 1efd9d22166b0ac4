"""Reading the ledger: balances, a fingerprint of every row, statements for data teams (and
where a run's statement file goes)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import psycopg

from csl.money import from_minor


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


def statement_path(root: str | Path, run_id: str) -> Path:
    """A run's statement file: ``<root>/settlement/statement_<run id>.csv``, every character of
    the run id outside letters, digits and ``-_.`` replaced by ``_`` (a run id is not a path)."""
    safe_run = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return Path(root) / "settlement" / f"statement_{safe_run}.csv"


def write_statement_file(conn: psycopg.Connection, path: Path, *, contributor: str | None = None) -> int:
    """``write_statement`` into the file ``path`` (its folder created); returns rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        return write_statement(conn, out, contributor=contributor)
