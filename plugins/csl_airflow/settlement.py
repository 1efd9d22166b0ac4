"""Operators of ``csl_revenue_settlement`` (``csl.settlement``): the settlement run, payout
sending, the statement."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from csl.errors import ConfigError
from csl_airflow.base import CslBaseOperator, _int_param, _truthy

__all__ = ["PayoutSendOperator", "SettlementOperator", "StatementOperator"]

log = logging.getLogger("csl.airflow.settlement")


class SettlementOperator(CslBaseOperator):
    """One settlement run (advisory lock, allocate, post, claw back, gate, payout instructions).

    A failed gate fails the task without retry (the data must be fixed); its findings and the
    validation result stay in ``csl_ops``. Emits the task's outlets (the ledger Asset) only on
    success."""

    template_fields: Sequence[str] = ("share_bps", "minimum_payout_cents", "period_start", "period_end", "dry_run")

    def __init__(self, *, share_bps: Any = 7000, minimum_payout_cents: Any = 1000, period_start: Any = None,
                 period_end: Any = None, dry_run: Any = False, lock_wait_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.share_bps, self.minimum_payout_cents = share_bps, minimum_payout_cents
        self.period_start, self.period_end, self.dry_run = period_start, period_end, dry_run
        self.lock_wait_s = lock_wait_s

    def execute(self, context: Any) -> dict[str, Any]:
        from collections import Counter

        from csl import settlement

        def optional(value: Any) -> str | None:
            return None if value in (None, "", "None") else str(value)

        try:
            params = settlement.Params(share_bps=_int_param(self.share_bps, "contributor_share_bps"),
                                       minimum_payout_cents=_int_param(self.minimum_payout_cents, "minimum_payout_cents"),
                                       period_start=optional(self.period_start), period_end=optional(self.period_end),
                                       dry_run=_truthy(self.dry_run), lock_wait_s=self.lock_wait_s)
        except settlement.SettlementParamsError as exc:
            raise AirflowFailException(str(exc)) from exc
        ti = context["ti"]
        with self.database() as db, db.connect_direct("primary") as conn:
            try:  # SettlementBusy / SettlementRace (the platform wrote a split meanwhile) raise: Airflow retries
                outcome = settlement.settle(conn, params, run_key=f"{ti.dag_id}/{ti.run_id}")
            except settlement.GateFailed as exc:
                ti.xcom_push(key="gate", value=exc.outcome["gate"])
                ti.xcom_push(key="findings", value=exc.outcome["findings"][:200])
                self.record(db, context, status="failed", error=str(exc),
                            outcome={k: v for k, v in exc.outcome.items() if k != "findings"})
                raise AirflowFailException(f"{exc}; {len(exc.outcome['findings'])} finding(s), see XCom 'findings'") from exc
            self.record(db, context, status="success",
                        outcome={k: v for k, v in outcome.items() if k not in ("findings", "payouts")}
                        | {"payouts": len(outcome.get("payouts", []))})
        summary = {k: outcome.get(k) for k in ("status", "run_id", "due", "licences", "held", "splits_reused",
                                              "splits_paid_before", "by_currency", "clawbacks", "timings_s")}
        summary["payouts"] = len(outcome.get("payouts", []))
        summary["payout_minor"] = sum(p["amount_minor"] for p in outcome.get("payouts", []))
        summary["payout_holds"] = dict(Counter(h["reason"] for h in outcome.get("payout_holds", [])))
        ti.xcom_push(key="gate", value=outcome.get("gate"))
        log.info("settlement %s: %s", summary["status"], summary)
        return summary


class PayoutSendOperator(CslBaseOperator):
    """Sends payouts (only when ``enabled``) through the ``csl_payouts`` connection (host, port,
    schema = ``http``/``https``, password = the API key); see ``csl.settlement.PayoutSender``.

    Refused payouts and payouts needing review fail the task without retry; payouts whose
    outcome is still unknown raise so that Airflow retries (same idempotency keys)."""

    template_fields: Sequence[str] = ("enabled",)

    def __init__(self, *, enabled: Any = False, payouts_conn_id: str = "csl_payouts", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled
        self.payouts_conn_id = payouts_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowSkipException

        from csl import settlement

        if not _truthy(self.enabled):
            raise AirflowSkipException("send_payouts is false: instructions stay 'instructed'")
        conn_info = BaseHook.get_connection(self.payouts_conn_id)
        scheme = conn_info.schema or "https"
        port = f":{conn_info.port}" if conn_info.port else ""
        # A bad endpoint or key (refused by us, or a 401/403 from the provider) is configuration: no retry.
        # An unreachable provider (PayoutProviderUnavailable) raises as it is: Airflow retries.
        try:
            sender = settlement.PayoutSender(endpoint=f"{scheme}://{conn_info.host}{port}",
                                             api_key=conn_info.password or "")
        except ConfigError as exc:
            raise AirflowFailException(f"{self.payouts_conn_id}: {exc}") from exc
        try:
            with self.database() as db, db.connect_direct("primary") as conn:
                result = sender.send(conn)
        except ConfigError as exc:  # settlement.PayoutConfigError: payouts untouched
            raise AirflowFailException(f"{self.payouts_conn_id}: {exc}") from exc
        finally:
            sender.close()
        context["ti"].xcom_push(key="errors", value=result["errors"][:200])
        if result["failed"] or result["needs_review"]:  # a person must act: retrying the task cannot help
            raise AirflowFailException(f"{result['failed']} payout(s) refused, {result['needs_review']} need review "
                                       f"(outcome unknown past the idempotency window): {result['errors'][:5]}")
        if result["retry_later"]:
            raise RuntimeError(f"{result['retry_later']} payout(s) with an unknown outcome, sent again with the same "
                               f"idempotency key on retry: {result['errors'][:3]}")  # transient: Airflow retries
        log.info("payouts: %s confirmed (%s looked up)", result["confirmed"], result["looked_up"])
        return {k: v for k, v in result.items() if k != "errors"}


class StatementOperator(CslBaseOperator):
    """Writes the per-contributor statement CSV for data teams (one file per run)."""

    def __init__(self, *, out_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        import os
        from pathlib import Path

        from csl import settlement

        root = Path(self.out_dir or os.environ.get("CSL_REPORTS_DIR")
                    or Path(os.environ.get("AIRFLOW_HOME", ".")) / "csl_reports")
        folder = root / "settlement"
        folder.mkdir(parents=True, exist_ok=True)
        safe_run = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in context["ti"].run_id)
        path = folder / f"statement_{safe_run}.csv"
        with (self.database() as db, db.connect_direct("primary") as conn,
              path.open("w", newline="") as out):
            rows = settlement.write_statement(conn, out)
        log.info("statement: %d postings in %s", rows, path)
        return {"path": str(path), "rows": rows}
