"""
### Storage replication: every provider holds every referenced object, proven by SHA-256

Uploads that fell back queue a copy; the integrity sweep finds `missing`, `fallback_only`,
`checksum_mismatch` and `size_mismatch` objects. This DAG repairs them.

1. **plan** — the run's input (`mode`): `queue` (pending `csl_ops.replication_queue` rows; the
   hourly schedule), `findings` (open findings; a run started by the Asset
   `csl_storage_findings`), or `diff` (a fresh sweep of `prefix`). Every provider is asked about
   each key; the right copy is the one whose size matches the database row and whose bytes hash
   to its own `sha256` metadata. Two copies that each verify but differ, none that verifies, or
   a database size no copy has: nothing is overwritten, a `replication_conflict` finding waits
   for a person. The plan (XCom `plan`: source, destination, size, reason per object) is all a
   `dry_run` does; `max_objects` / `max_bytes` refuse the run before anything is copied.
2. **copy** — one mapped task per shard of key-prefix cells, `concurrency` objects at a time:
   streamed GET→PUT (multipart above `multipart_threshold_mb`), `CopyObject` on one endpoint;
   content type, cache headers, metadata and tags preserved; each copy verified (the streamed
   SHA-256, then the destination's checksum or a re-read) before it counts. A provider that
   stops answering fails the task naming it; a retry resumes.
3. **report** — copied, verified, bytes, conflicts (XCom `summary`,
   `csl_ops.replication_runs`); emits the Asset `csl_storage_replicated` when every copy verified.

Every copy is a row in `csl_ops.replication_copies`. Without Airflow:
`python -m csl storage replicate`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, XComArg

from csl_airflow.dags import csl_dag
from csl_airflow.params import param
from csl_airflow.storage import ReplicationCopyOperator, ReplicationPlanOperator, ReplicationReportOperator

FINDINGS = Asset(name="csl_storage_findings")
REPLICATED = Asset(name="csl_storage_replicated")
PROVIDER = {"type": ["null", "string"], "pattern": "^[a-z0-9_-]+$"}


@csl_dag(
    "csl_storage_replication",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("17 * * * *", timezone="UTC"), assets=FINDINGS),
    tags=["storage", "replication"],
    doc_md=__doc__,
    retry_delay=pendulum.duration(minutes=1),
    params={
        "mode": Param("auto", type="string", enum=["auto", "queue", "findings", "diff"],
                      description="queue: uploads that fell back; findings: the sweep's open findings; diff: a "
                                  "fresh comparison of the prefix; auto: findings when a sweep's Asset started "
                                  "the run, else queue."),
        "prefix": Param(None, type=["null", "string"], pattern="^[^*\\r\\n]*$", maxLength=512,
                        description="Only keys under this prefix (empty = everything)."),
        "source": Param(None, **PROVIDER, description="Copy only from this provider (empty = the copy that "
                                                      "verifies, wherever it is)."),
        "destination": Param(None, **PROVIDER, description="Copy only to this provider (empty = every provider "
                                                           "that lacks the right copy)."),
        "max_objects": Param(10000, type="integer", minimum=1, maximum=10_000_000,
                             description="Refuse before copying anything when the plan copies more objects."),
        "max_bytes": Param(100 * 1024 ** 3, type="integer", minimum=1, maximum=1 << 50,
                           description="Refuse before copying anything when the plan copies more bytes."),
        "concurrency": Param(8, type="integer", minimum=1, maximum=64,
                             description="Objects copied at once by each copy task."),
        "multipart_threshold_mb": Param(8, type="integer", minimum=5, maximum=5120,
                                        description="Objects above this size go up in streamed parts."),
        "shards": Param(2, type="integer", minimum=1, maximum=64,
                        description="Mapped copy tasks; each takes a contiguous run of key-prefix cells."),
        "dry_run": Param(False, type="boolean", description="Show the plan (XCom plan), copy nothing."),
        "providers": Param([], type=["null", "array"], uniqueItems=True,
                           items={"type": "string", "pattern": "^[a-z0-9_-]+$"},
                           description="Providers by role (primary, fallback); empty = every configured one."),
    },
)
def csl_storage_replication():
    options = {name: param(name) for name in ("mode", "prefix", "source", "destination", "max_objects",
                                              "max_bytes", "concurrency", "multipart_threshold_mb", "dry_run")}
    plan = ReplicationPlanOperator(task_id="plan", shards=param("shards"), providers=param("providers"), **options)
    copy = ReplicationCopyOperator.partial(
        task_id="copy", map_index_template="{{ shard_name }}", providers=param("providers"), **options,
    ).expand(shard=plan.output)
    report = ReplicationReportOperator(task_id="report", plan=XComArg(plan, key="plan"), outlets=[REPLICATED])
    plan >> copy >> report


csl_storage_replication()
