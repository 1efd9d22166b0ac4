"""
### Storage cleanup: expired temporary uploads and old orphans → quarantine

Temporary uploads under `temp_prefix` (one of the temporary folders) older than `temp_ttl_h`,
and objects the integrity sweep has reported as orphans for longer than `orphan_grace_h`
(re-checked now: still there), are **moved** to `_quarantine/<date>/<key>` on the same
provider — copy, verify, then remove the original — and recorded in
`csl_ops.storage_quarantine`. An object any row refers to (samples, generation results,
avatars; keys or URLs) never moves. `python -m csl storage restore --key K` (or
`--run-key RUN`) brings them back, refusing to overwrite what lives there now.

The candidate list is made first: more than `max_objects`, or more than `max_share` of a
provider's objects, aborts the run before anything moves. `dry_run` lists what would move;
left empty it is **automatic: a manual run is a dry run, the nightly schedule does the work**.
Quarantine older than `quarantine_retention_days` is deleted only with `purge_quarantine`.
"""

from __future__ import annotations

from airflow.sdk import Param

from csl.storage import TEMP_PREFIXES
from csl_airflow.dags import csl_dag
from csl_airflow.params import param
from csl_airflow.storage import StorageCleanupOperator


@csl_dag(
    "csl_storage_cleanup",
    schedule="30 4 * * *",
    tags=["storage", "cleanup"],
    doc_md=__doc__,
    params={
        "dry_run": Param(None, type=["null", "boolean"],
                         description="List what would move; move nothing. Empty = automatic: a dry run when "
                                     "triggered by hand, the real work when the schedule runs it."),
        "temp_prefix": Param(TEMP_PREFIXES[0], type="string", enum=list(TEMP_PREFIXES),
                             description="Folder of temporary uploads."),
        "temp_ttl_h": Param(24, type="integer", minimum=0, maximum=24 * 365,
                            description="Temporary uploads older than this many hours move."),
        "orphan_grace_h": Param(72, type="integer", minimum=0, maximum=24 * 365,
                                description="Orphans reported for longer than this many hours move."),
        "max_objects": Param(1000, type="integer", minimum=0, maximum=1_000_000,
                             description="More candidates than this aborts the run before anything moves."),
        "max_share": Param(0.1, type="number", exclusiveMinimum=0, maximum=1,
                           description="More candidates than this share of a provider's objects aborts the run "
                                       "before anything moves."),
        "purge_quarantine": Param(False, type="boolean",
                                  description="Also delete quarantined objects older than the retention."),
        "quarantine_retention_days": Param(30, type="integer", minimum=1, maximum=3650,
                                           description="Days a quarantined object is kept before it may be purged."),
        "providers": Param([], type=["null", "array"], uniqueItems=True,
                           items={"type": "string", "pattern": "^[a-z0-9_-]+$"},
                           description="Providers by role; empty = every configured one."),
    },
)
def csl_storage_cleanup():
    StorageCleanupOperator(
        task_id="cleanup", providers=param("providers"), temp_prefix=param("temp_prefix"),
        temp_ttl_h=param("temp_ttl_h"), orphan_grace_h=param("orphan_grace_h"), max_objects=param("max_objects"),
        max_share=param("max_share"), dry_run=param("dry_run"), purge_quarantine=param("purge_quarantine"),
        quarantine_retention_days=param("quarantine_retention_days"),
    )


csl_storage_cleanup()
