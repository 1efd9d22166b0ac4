"""
### Platform health: database, storage providers, the edge

Hourly, and triggerable from the UI. Each component is checked by its own task, so the
grid shows at a glance which one is red:

- **check_database** — primary answers and is not in recovery; the read replica answers,
  is streaming, and its replay lag is under `max_replica_lag_s`; one real read is routed
  (to the replica when healthy, else to the primary). Fails only when the primary or reads
  are down; a replica problem is reported, reads keep working.
- **check_storage** (one mapped task per provider) — put → get → delete of a probe object.
- **check_edge** — every configured CDN zone (audio, images, static): reachable, its latency and,
  where the provider exposes it, the hit ratio (the local edge answers `/__health`, says its
  backend is healthy, and `varnishstat` gives the ratio). A zone that is down is named
  `edge.<zone>`; `tolerate` takes `edge` (every zone) or one zone.
- **summary** — collects every report into XCom (`summary`) and `csl_ops.task_runs`, and
  fails naming each component that is down (unless listed in `tolerate`).

Connections: `csl_db`, `csl_db_replica`, `csl_storage_primary`, `csl_storage_fallback`,
`csl_cdn_edge` and the zones' `csl_cdn_audio`, `csl_cdn_images`, `csl_cdn_static`. Without Airflow: `python -m csl health`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param

from csl_airflow.dags import csl_dag
from csl_airflow.health import HealthSummaryOperator, PlatformHealthOperator
from csl_airflow.params import param

# csl.health.COMPONENTS, written out: this file must not import csl (cheap to parse); a test checks they agree.
COMPONENTS = ["database.primary", "database.replica", "database.reads", "storage.primary",
              "storage.fallback", "edge", "edge.audio", "edge.images", "edge.static"]
STORAGE_PROVIDERS = ["primary", "fallback"]


@csl_dag(
    "csl_platform_health",
    schedule="@hourly",
    dagrun_timeout=pendulum.duration(minutes=10),
    tags=["health"],
    doc_md=__doc__,
    retries=0,
    default_args={"execution_timeout": pendulum.duration(minutes=2)},
    params={
        "max_replica_lag_s": Param(30, type="number", minimum=0, maximum=3600,
                                   description="Replay lag (seconds) above which the replica counts as down "
                                               "and reads go to the primary."),
        "tolerate": Param([], type=["null", "array"], items={"type": "string", "enum": COMPONENTS},
                          uniqueItems=True, examples=COMPONENTS,
                          description="Components allowed to be down without failing the run "
                                      "(e.g. database.replica during a replica rebuild). Empty = none."),
    },
)
def csl_platform_health():
    database = PlatformHealthOperator(task_id="check_database", component="database",
                                      max_replica_lag_s=param("max_replica_lag_s"))
    storage = PlatformHealthOperator.partial(
        task_id="check_storage", component="storage", map_index_template="{{ component_name }}",
    ).expand(provider=STORAGE_PROVIDERS)
    edge = PlatformHealthOperator(task_id="check_edge", component="edge")
    HealthSummaryOperator(
        task_id="summary",
        reports=[database.output, storage.output, edge.output],
        expected=["database", *(f"storage.{p}" for p in STORAGE_PROVIDERS), "edge"],
        tolerate=param("tolerate"),
    )


csl_platform_health()
