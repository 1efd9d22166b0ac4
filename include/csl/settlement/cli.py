"""``python -m csl settlement run|statement|send-payouts|review-payout``: the settlement without
Airflow.

Wired into ``csl.cli`` with ``add_cli(sub)``. Exit codes as the rest of the CLI: 0 done, 1 the
work ran and found a problem (a failed gate, payouts refused, to review or to retry), 2 bad input
or configuration, refused before the database is touched (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from csl.cliargs import number
from csl.cliargs import print_result as _print
from csl.cliargs import run_key as cli_run_key
from csl.errors import ConfigError

__all__ = ["add_cli"]


def _period(text: str):
    """An ISO date or date-time (``csl.settlement.parse_period``), refused by argparse (exit 2)."""
    from csl.settlement import SettlementParamsError, parse_period

    try:
        return parse_period(text)
    except SettlementParamsError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def _uuid(text: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID (a contributor's id), got {text[:60]!r}") from None


def _key(text: str) -> str:
    if not 1 <= len(text) <= 250 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"expected 1..250 printable characters, got {text[:60]!r}")
    return text


@contextlib.contextmanager
def _primary(settings: Any) -> Iterator[Any]:
    """A direct connection to the platform database's primary (closed with the pools)."""
    from csl.db import Database

    with Database(settings.require_database()) as db, db.connect_direct("primary") as conn:
        yield conn


def _cmd_run(args: argparse.Namespace, settings: Any) -> int:
    from csl import settlement

    params = settlement.Params(share_bps=args.contributor_share_bps, minimum_payout_cents=args.minimum_payout_cents,
                               period_start=args.period_start, period_end=args.period_end, dry_run=args.dry_run)
    run_key = args.run_key or cli_run_key()
    with _primary(settings) as conn:
        try:
            outcome = settlement.settle(conn, params, run_key=run_key)
        except settlement.GateFailed as exc:
            _print(args, exc.outcome.as_dict(), f"GATE FAILED: {exc}\n" + "\n".join(
                f"  finding {f['kind']}: licence {f['license_id']} {f['detail']}" for f in exc.outcome.findings[:20]))
            return 1
    clawbacks = outcome.clawbacks
    human = (f"{outcome.status}: {outcome.licences:,} licences settled, "
             f"{outcome.splits_reused:,} platform splits reused, "
             f"{clawbacks.get('refunds', 0):,} refunds and {clawbacks.get('disputes', 0):,} lost disputes clawed back, "
             f"{len(outcome.payouts):,} payout instructions"
             + "".join(f"\n  held (balance carried): {h['balance_minor']} {h['currency']} of {h['contributor_id']}: "
                       f"{h['reason']}" for h in outcome.payout_holds[:20]))
    _print(args, outcome.as_dict(), human)
    return 0


def _cmd_statement(args: argparse.Namespace, settings: Any) -> int:
    from csl import settlement

    with _primary(settings) as conn:
        out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115 - stdout is not ours to close
        try:
            rows = settlement.write_statement(conn, out, contributor=args.contributor)
        finally:
            if args.out:
                out.close()
    if args.out:
        print(f"wrote {rows:,} postings to {args.out}")
    return 0


def _cmd_send_payouts(args: argparse.Namespace, settings: Any) -> int:
    from csl import settlement

    endpoint, key = os.environ.get("CSL_PAYOUT_ENDPOINT"), os.environ.get("CSL_PAYOUT_API_KEY")
    if not endpoint or not key:
        raise ConfigError("CSL_PAYOUT_ENDPOINT/CSL_PAYOUT_API_KEY", "both required to send payouts")
    # judged before the database is touched
    sender = settlement.PayoutSender(endpoint=settlement.payout_endpoint(endpoint, setting="CSL_PAYOUT_ENDPOINT"),
                                     api_key=key)
    with sender, _primary(settings) as conn:
        result = sender.send(conn)
    _print(args, result.as_dict(), f"payouts: {result.confirmed} confirmed ({result.looked_up} looked up), "
                                   f"{result.failed} failed, {result.needs_review} need review, "
                                   f"{result.retry_later} to retry")
    return 0 if result.ok else 1


def _cmd_review_payout(args: argparse.Namespace, settings: Any) -> int:
    from csl import settlement

    with _primary(settings) as conn:
        review = settlement.review_payout(conn, args.payout, transfer_id=args.transfer, not_paid=args.not_paid)
    _print(args, review.as_dict(), f"payout {review.payout_id}: {review.status} "
                                   f"({review.amount_minor} {review.currency} to {review.contributor_id})")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``settlement run|statement|send-payouts|review-payout`` on the ``csl`` command's
    subparsers: each action its own subcommand, with only its own options."""
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print the whole result as JSON")
    settlement = sub.add_parser("settlement", help="revenue-split settlement: run, statement CSV, send payouts")
    actions = settlement.add_subparsers(dest="action", required=True,
                                        metavar="{run,statement,send-payouts,review-payout}")

    p = actions.add_parser("run", parents=[json_flag], help="one settlement run: allocate, post, claw back, "
                                                            "instruct payouts, the gate")
    p.add_argument("--contributor-share-bps", type=number(int, 0, 10_000), default=7000)
    p.add_argument("--minimum-payout-cents", type=number(int, 0, 10**12), default=1000,
                   help="balances below this many minor units of their currency are carried (1000 = $10, ¥1,000)")
    p.add_argument("--period-start", type=_period, help="ISO date or date-time (licences created at or after; "
                                                         "UTC unless it has an offset)")
    p.add_argument("--period-end", type=_period, help="ISO date or date-time (licences created before)")
    p.add_argument("--run-key", type=_key, help="idempotency key of the run (default: a timestamp)")
    p.add_argument("--dry-run", action="store_true", help="compute and validate, commit nothing")
    p.set_defaults(func=_cmd_run)

    p = actions.add_parser("statement", help="the ledger's postings as CSV, for data teams")
    p.add_argument("--contributor", type=_uuid, help="one contributor's id")
    p.add_argument("--out", help="CSV file (default: stdout)")
    p.set_defaults(func=_cmd_statement)

    p = actions.add_parser("send-payouts", parents=[json_flag],
                           help="send instructed payouts (CSL_PAYOUT_ENDPOINT, CSL_PAYOUT_API_KEY)")
    p.set_defaults(func=_cmd_send_payouts)

    p = actions.add_parser("review-payout", parents=[json_flag], help="resolve a payout in needs_review")
    p.add_argument("--payout", type=number(int, 1, 2**62), required=True, help="the payout's id")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--transfer", help="the transfer found for it (tr_…): confirm it")
    verdict.add_argument("--not-paid", metavar="REASON",
                         help="no transfer was made: fail it (the next run pays the balance anew)")
    p.set_defaults(func=_cmd_review_payout)
