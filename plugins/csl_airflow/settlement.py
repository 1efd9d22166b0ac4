"""Operators of ``csl_revenue_settlement`` (``csl.settlement``): the settlement run, payout
sending, the statement."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from csl_airflow.base import CslBaseOperator

__all__ = ["PayoutSendOperator", "SettlementOperator", "StatementOperator"]

log = logging.getLogger("csl.airflow.settlement")


class SettlementOperator(CslBaseOperator):
    """One settlement run (advisory lock, allocate, post, claw back, gate, payout instructions).

    A failed gate fails the task without retry (the data must be fixed); its findings and the
    validation result stay in ``csl_ops`` and in the XComs ``gate`` and ``findings``. Emits the
    task's outlets (the ledger Asset) only on success."""

    template_fields: Sequence[str] = ("share_bps", "minimum_payout_cents", "period_start", "period_end", "dry_run")

    def __init__(self, *, share_bps: int = 7000, minimum_payout_cents: int = 1000, period_start: str | None = None,
                 period_end: str | None = None, dry_run: bool = False, lock_wait_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.share_bps, self.minimum_payout_cents = share_bps, minimum_payout_cents
        self.period_start, self.period_end, self.dry_run = period_start, period_end, dry_run
        self.lock_wait_s = lock_wait_s

    def execute(self, context: Any) -> dict[str, Any]:
        from csl import settlement

        params = settlement.Params(share_bps=self.share_bps, minimum_payout_cents=self.minimum_payout_cents,
                                   period_start=self.period_start, period_end=self.period_end, dry_run=self.dry_run,
                                   lock_wait_s=self.lock_wait_s)
        ti = context["ti"]
        with self.database() as db, db.connect_direct("primary") as conn:
            try:
                outcome = settlement.settle(conn, params, run_key=f"{ti.dag_id}/{ti.run_id}")
            except settlement.GateFailed as exc:  # kept for whoever fixes the data, then it fails the task
                ti.xcom_push(key="gate", value=exc.outcome.gate)
                ti.xcom_push(key="findings", value=exc.outcome.findings[:200])
                self.record(db, context, status="failed", error=str(exc), outcome=exc.outcome.as_record())
                log.error("%s; %d finding(s), see XCom 'findings'", exc, len(exc.outcome.findings))
                raise
            self.record(db, context, status="success", outcome=outcome.as_record())
        ti.xcom_push(key="gate", value=outcome.gate)
        summary = outcome.summary()
        log.info("settlement %s: %s", outcome.status, summary)
        return summary


class PayoutSendOperator(CslBaseOperator):
    """Sends payouts (only with ``send_payouts`` and not in a dry run) through the ``csl_payouts``
    connection (host, port, schema = ``http``/``https``, password = the API key); see
    ``csl.settlement.PayoutSender``.

    Refused payouts and payouts needing review fail the task without retry; payouts whose
    outcome is still unknown fail it for a retry (same idempotency keys)."""

    template_fields: Sequence[str] = ("send_payouts", "dry_run")

    def __init__(self, *, send_payouts: bool = False, dry_run: bool = False, payouts_conn_id: str = "csl_payouts",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.send_payouts, self.dry_run = send_payouts, dry_run
        self.payouts_conn_id = payouts_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowSkipException

        from csl import settlement

        not_sent = settlement.payouts_not_sent(send_payouts=self.send_payouts, dry_run=self.dry_run)
        if not_sent:
            raise AirflowSkipException(not_sent)
        payouts = BaseHook.get_connection(self.payouts_conn_id)
        endpoint = settlement.connection_endpoint(schema=payouts.schema, host=payouts.host, port=payouts.port,
                                                  setting=f"{self.payouts_conn_id}: payout endpoint")
        with (settlement.PayoutSender(endpoint=endpoint, api_key=payouts.password or "") as sender,
              self.database() as db, db.connect_direct("primary") as conn):
            result = sender.send(conn)
        context["ti"].xcom_push(key="errors", value=result.errors[:200])
        result.raise_for_problems()
        log.info("payouts: %s confirmed (%s looked up)", result.confirmed, result.looked_up)
        return result.counts()


class StatementOperator(CslBaseOperator):
    """Writes the per-contributor statement CSV for data teams (one file per run, under
    ``out_dir`` or ``csl.config.reports_root()``)."""

    def __init__(self, *, out_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def execute(self, context: Any) -> dict[str, Any]:
        from csl import settlement
        from csl.config import reports_root

        path = settlement.statement_path(self.out_dir or reports_root(), context["ti"].run_id)
        with self.database() as db, db.connect_direct("primary") as conn:
            rows = settlement.write_statement_file(conn, path)
        log.info("statement: %d postings in %s", rows, path)
        return {"path": str(path), "rows": rows}
