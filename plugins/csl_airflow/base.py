"""The base of every csl operator: settings from Airflow connections (once per task run), the
platform database, the ``csl_ops.task_runs`` record, the run's ``conf`` checked against the
declared Params before anything runs, an upstream result that is missing named as such, and
csl's error kinds mapped to Airflow's in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from csl.config import Settings
from csl.errors import BadInput, ConfigError, ProblemFound, Transient
from csl_airflow.connections import settings_from_connections
from csl_airflow.params import conf_refusal

__all__ = ["CslBaseOperator", "run_key"]

log = logging.getLogger("csl.airflow")


def run_key(context: Any):
    """The ``csl_ops.task_runs`` key of the running task instance."""
    from csl.runs import RunKey

    ti = context["ti"]
    return RunKey(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                  map_index=ti.map_index if ti.map_index is not None else -1, try_number=ti.try_number or 1)


def map_errors(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``execute`` with csl's error kinds (``csl.errors``) mapped to Airflow's, in one place: a
    ``Transient`` error is raised for a retry, ``BadInput`` and ``ProblemFound`` fail the task
    without one (the same input would be refused again, the same problem found again)."""

    @functools.wraps(execute)
    def run(self: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, context, *args, **kwargs)
        except Transient as exc:
            raise AirflowException(f"{exc} (retried)") from exc
        except (BadInput, ProblemFound) as exc:
            raise AirflowFailException(str(exc)) from exc

    return run


class CslBaseOperator(BaseOperator):
    """Turns Airflow connections into ``csl`` settings (once per task run), and refuses, before
    the task does anything, a run whose ``conf`` has a key the DAG does not declare as a Param.

    The API server refuses such a trigger with HTTP 400 (``csl_airflow.trigger_guard``); this
    check also covers what does not pass it (``airflow dags trigger``, TriggerDagRunOperator)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:  # every concrete operator's execute maps csl's errors the same way
            cls.execute = map_errors(cls.__dict__["execute"])

    def __init__(self, *, conn_ids: dict[str, str] | None = None, max_replica_lag_s: float | str = 30.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_ids = conn_ids or {}
        self.max_replica_lag_s = max_replica_lag_s

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Airflow's rendering; an upstream result (an ``XComArg`` argument) that does not exist
        because its task failed or did not run is one clear failure, not retried."""
        from airflow.sdk.exceptions import XComNotFound

        try:
            super().render_template_fields(context, jinja_env)
        except XComNotFound as exc:
            raise AirflowFailException(f"no {exc.key!r} result from task {exc.task_id!r}: it failed or did not run "
                                       "(see its log)") from None

    def pre_execute(self, context: Any) -> None:
        declared = set(self.params or {}) | (set(self.dag.params) if self.has_dag() else set())
        refusal = conf_refusal(self.dag_id, getattr(context.get("dag_run"), "conf", None), declared)
        if refusal:
            raise AirflowFailException(refusal)  # no retry: the same conf would be refused again
        super().pre_execute(context)

    def database(self):
        """The platform database (``csl.db.Database``) from the ``csl_db`` connections; a context
        manager that closes its pools."""
        from csl.db import Database

        return Database(self.settings.require_database())

    @staticmethod
    def record(db: Any, context: Any, *, status: str, outcome: Any = None, error: str | None = None) -> None:
        """This task run's row in ``csl_ops.task_runs``: its Params, outcome figures and error."""
        from csl.runs import record_run

        record_run(db, run_key(context), status=status, params=dict(context["params"]), outcome=outcome, error=error)

    @cached_property
    def settings(self) -> Settings:
        try:
            return settings_from_connections(self.conn_ids, max_replica_lag_s=self.max_replica_lag_s)
        except ConfigError as exc:  # a missing or malformed connection: retrying cannot help
            raise AirflowFailException(f"configuration: {exc}") from exc
