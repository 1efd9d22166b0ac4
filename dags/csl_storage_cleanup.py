"""
### Storage cleanup: expired temporary uploads and old orphans → quarantine

Temporary uploads under `temp_prefix` older than `temp_ttl_h`, and objects the integrity
sweep has reported as orphans for longer than `orphan_grace_h` (re-checked now: still there,
still unreferenced), are **moved** to `_quarantine/<date>/<key>` on the same provider —
copy, verify, then remove the original — and recorded in `csl_ops.storage_quarantine`.
`python -m csl storage restore --key K` (or `--run-key RUN`) brings them back.

The candidate list is made first: more than `max_objects` aborts the run before anything
moves. `dry_run` lists what would move. Quarantine older than `quarantine_retention_days`
is deleted only with `purge_quarantine`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from csl_airflow.storage import StorageCleanupOperator


@dag(
    dag_id="csl_storage_cleanup",
    schedule="30 4 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["csl", "storage", "cleanup"],
    doc_md=__doc__,
    default_args={"owner": "csl-platform", "retries": 1, "retry_delay": pendulum.duration(minutes=2)},
    params={
        "dry_run": Param(False, type="boolean", description="List what would move; move nothing."),
        "temp_prefix": Param("tmp/", type="string", pattern="^(?!_quarantine/)[^*]+/$", maxLength=256,
                             description="Folder of temporary uploads (ends with '/')."),
        "temp_ttl_h": Param(24, type="integer", minimum=0, maximum=24 * 365,
                            description="Temporary uploads older than this many hours move."),
        "orphan_grace_h": Param(72, type="integer", minimum=0, maximum=24 * 365,
                                description="Orphans reported for longer than this many hours move."),
        "max_objects": Param(1000, type="integer", minimum=0, maximum=1_000_000,
                             description="More candidates than this aborts the run before anything moves."),
        "purge_quarantine": Param(False, type="boolean",
                                  description="Also delete quarantined objects older than the retention."),
        "quarantine_retention_days": Param(30, type="integer", minimum=1, maximum=3650,
                                           description="Days a quarantined object is kept before it may be purged."),
        "providers": Param([], type="array", uniqueItems=True, items={"type": "string", "pattern": "^[a-z0-9_-]+$"},
                           description="Providers by role; empty = every configured one."),
    },
)
def csl_storage_cleanup():
    StorageCleanupOperator(
        task_id="cleanup", providers="{{ params.providers | tojson }}", temp_prefix="{{ params.temp_prefix }}",
        temp_ttl_h="{{ params.temp_ttl_h }}", orphan_grace_h="{{ params.orphan_grace_h }}",
        max_objects="{{ params.max_objects }}", dry_run="{{ params.dry_run }}",
        purge_quarantine="{{ params.purge_quarantine }}",
        quarantine_retention_days="{{ params.quarantine_retention_days }}",
    )


csl_storage_cleanup()
