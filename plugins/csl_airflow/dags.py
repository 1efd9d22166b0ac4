"""What every csl DAG shares, written once: its start date, no catch-up, one run at a time, the
``csl`` tag (the trigger guard refuses undeclared ``conf`` keys for DAGs carrying it), an owner
and a retry policy in ``default_args``, and the failure callback. A DAG file states only what is
its own: id, schedule, tags, doc, Params, retries when they differ."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pendulum
from airflow.sdk import dag

from csl_airflow.params import STRICT_CONF_TAG

__all__ = ["START_DATE", "csl_dag"]

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def csl_dag(dag_id: str, *, schedule: Any, tags: Sequence[str], doc_md: str | None, owner: str = "csl-platform",
            retries: int = 1, retry_delay: pendulum.Duration | None = None,
            default_args: dict[str, Any] | None = None, on_failure_callback: Callable[..., Any] | None = None,
            **kwargs: Any) -> Callable[..., Any]:
    """``airflow.sdk.dag`` with the project's defaults; keyword arguments a DAG gives win."""
    args = {"owner": owner, "retries": retries, "retry_delay": retry_delay or pendulum.duration(minutes=2),
            **(default_args or {})}
    settings: dict[str, Any] = {"start_date": START_DATE, "catchup": False, "max_active_runs": 1, **kwargs}
    if on_failure_callback is not None:
        settings["on_failure_callback"] = on_failure_callback
    return dag(dag_id=dag_id, schedule=schedule, tags=[STRICT_CONF_TAG, *tags], doc_md=doc_md, default_args=args,
               **settings)
