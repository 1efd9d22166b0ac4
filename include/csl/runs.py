"""Run records in ``csl_ops.task_runs``: what each pipeline task did, with its figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from csl.db import Database

__all__ = ["RunKey", "record_run"]

_UPSERT = """
INSERT INTO csl_ops.task_runs
    (dag_id, task_id, run_id, map_index, try_number, status, params, outcome, error, started_at, finished_at)
VALUES (%(dag_id)s, %(task_id)s, %(run_id)s, %(map_index)s, %(try_number)s, %(status)s,
        %(params)s, %(outcome)s, %(error)s, coalesce(%(started_at)s, now()),
        CASE WHEN %(status)s = 'running' THEN NULL ELSE now() END)
ON CONFLICT (dag_id, task_id, run_id, map_index) DO UPDATE
SET try_number = excluded.try_number, status = excluded.status, params = excluded.params,
    outcome = excluded.outcome, error = excluded.error, finished_at = excluded.finished_at
RETURNING id
"""


@dataclass(frozen=True, kw_only=True)
class RunKey:
    """Identifies one task run: Airflow's task instance, or a CLI invocation."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1


def record_run(db: Database, key: RunKey, *, status: str, params: Mapping[str, Any] | None = None,
               outcome: Mapping[str, Any] | None = None, error: str | None = None,
               started_at: Any = None) -> int:
    """Insert or update the run's row (a retry updates the same row); returns its id."""
    values = {
        "dag_id": key.dag_id,
        "task_id": key.task_id,
        "run_id": key.run_id,
        "map_index": key.map_index,
        "try_number": key.try_number,
        "status": status,
        "params": json.dumps(dict(params or {}), default=str),
        "outcome": json.dumps(dict(outcome or {}), default=str),
        "error": error,
        "started_at": started_at,
    }
    return db.transaction(lambda conn: conn.execute(_UPSERT, values).fetchone()[0])
