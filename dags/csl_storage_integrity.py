"""
### Storage integrity sweep: what the database refers to vs. what every provider holds

The platform let providers drift apart and answered `false` from `exists` on any error.
This sweep never deletes; it reports, and keeps each finding open until a later sweep no
longer sees it.

1. **plan** — key-prefix *cells* (`samples/0a/`, …) from the database and from each provider's
   delimiter listing, dealt out to `shards`.
2. **sweep** — one mapped task per shard: the database inventory (on the read replica when it
   is healthy and caught up) and every provider's listing of each cell, brought into one key
   order and **merged in one streaming pass**. Findings:
   `missing`, `orphan`, `size_mismatch`, `checksum_mismatch`, `fallback_only`. Objects whose
   ETags disagree between providers, a `deep_sample` share of the rest and every open checksum
   finding are downloaded and hashed. A provider that is down fails its shards, naming it —
   never a flood of false `missing`.
3. **report** — counts per kind and provider, bytes, duration (XCom `summary`,
   `csl_ops.storage_sweeps`); emits the Asset `csl_storage_findings` when every shard swept.

Findings live in `csl_ops.storage_findings`; the primary's copy is the reference, and a sweep
of some providers closes only findings it could judge. Without Airflow:
`python -m csl storage sweep`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, XComArg

from csl_airflow.dags import csl_dag
from csl_airflow.params import param
from csl_airflow.storage import StorageSweepPlanOperator, StorageSweepReportOperator, StorageSweepShardOperator

FINDINGS = Asset(name="csl_storage_findings")


@csl_dag(
    "csl_storage_integrity",
    schedule="0 3 * * *",
    tags=["storage", "integrity"],
    doc_md=__doc__,
    retry_delay=pendulum.duration(minutes=1),
    params={
        "shards": Param(4, type="integer", minimum=1, maximum=256,
                        description="Mapped sweep tasks; each takes a contiguous run of key-prefix cells."),
        "deep_sample": Param(0.01, type="number", minimum=0, maximum=1,
                             description="Share of objects downloaded and hashed against their SHA-256 metadata "
                                         "(objects whose ETags disagree are always checked)."),
        "prefix": Param(None, type=["null", "string"], pattern="^[^*]*$", maxLength=512,
                        description="Only keys under this prefix (empty = everything)."),
        "key_order": Param("path", type="string", enum=["path", "byte"],
                           description="The merge order (path: SeaweedFS/MinIO, byte: AWS S3). Each provider's "
                                       "listing is checked against its own declared listing order and brought into "
                                       "this one; a listing that breaks its declared order stops its shard."),
        "depth": Param(2, type="integer", minimum=1, maximum=8, description="Key segments per cell."),
        "providers": Param([], type=["null", "array"], uniqueItems=True,
                           items={"type": "string", "pattern": "^[a-z0-9_-]+$"},
                           description="Providers by role (primary, fallback); empty = every configured one. "
                                       "The primary's copy is the reference, in any order; a sweep closes only "
                                       "findings about the providers it swept."),
    },
)
def csl_storage_integrity():
    options = {name: param(name) for name in ("depth", "key_order", "deep_sample", "prefix")}  # every step's
    plan = StorageSweepPlanOperator(task_id="plan", shards=param("shards"), providers=param("providers"), **options)
    sweep = StorageSweepShardOperator.partial(
        task_id="sweep", map_index_template="{{ shard_name }}", providers=param("providers"), **options,
    ).expand(shard=plan.output)
    report = StorageSweepReportOperator(task_id="report", plan=XComArg(plan, key="plan"), outlets=[FINDINGS],
                                        **options)
    plan >> sweep >> report


csl_storage_integrity()
