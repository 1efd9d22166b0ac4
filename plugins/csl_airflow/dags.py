"""What every csl DAG shares, written once: its start date, no catch-up, one run at a time, the
``csl`` tag (the trigger guard refuses undeclared ``conf`` keys for DAGs carrying it), an owner
and a retry policy in ``default_args``, and every task's failure callback. A DAG file states only
what is its own: id, schedule, tags, doc, Params, retries when they differ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pendulum
from airflow.sdk import dag

from csl_airflow.params import STRICT_CONF_TAG

__all__ = ["START_DATE", "csl_dag", "on_task_failure"]

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")

log = logging.getLogger("csl.airflow")


def on_task_failure(context: Any) -> None:
    """Every csl task's failure, in one place: one line naming the DAG, task, run, try and the
    error's first line (where alerting and a failure metric attach)."""
    ti = context.get("ti")
    error = str(context.get("exception") or "").strip().splitlines()
    log.error("csl task failed: %s.%s run %s try %s: %s", getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"),
              getattr(ti, "run_id", "?"), getattr(ti, "try_number", "?"), error[0] if error else "no error message")


def csl_dag(dag_id: str, *, schedule: Any, tags: Sequence[str], doc_md: str | None, owner: str = "csl-platform",
            retries: int = 1, retry_delay: pendulum.Duration | None = None,
            default_args: dict[str, Any] | None = None, on_failure_callback: Callable[..., Any] | None = None,
            **kwargs: Any) -> Callable[..., Any]:
    """``airflow.sdk.dag`` with the project's defaults; keyword arguments a DAG gives win
    (``on_failure_callback`` is the DAG run's; every task's is :func:`on_task_failure`)."""
    args = {"owner": owner, "retries": retries, "retry_delay": retry_delay or pendulum.duration(minutes=2),
            "on_failure_callback": on_task_failure, **(default_args or {})}
    settings: dict[str, Any] = {"start_date": START_DATE, "catchup": False, "max_active_runs": 1, **kwargs}
    if on_failure_callback is not None:
        settings["on_failure_callback"] = on_failure_callback
    return dag(dag_id=dag_id, schedule=schedule, tags=[STRICT_CONF_TAG, *tags], doc_md=doc_md, default_args=args,
               **settings)
