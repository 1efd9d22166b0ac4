"""
### Index installation: the declared catalog, built online, drift and INVALID repaired

Replaces the platform's setup script (23 `CREATE INDEX CONCURRENTLY IF NOT EXISTS` that
swallowed every error and left INVALID indexes behind forever).

1. **plan** — diff `include/sql/maintenance/index_catalog.sql` against `pg_catalog` (canonical
   `pg_get_indexdef`, not names): `missing` → build, `invalid` → drop concurrently + rebuild,
   `drifted` → build under a temporary name, drop the old one, rename (the table never lacks
   it), `ok` → skip, `unknown` → reported, never touched. The plan is in the log, XCom
   `plan` and `csl_ops.task_runs`; `dry_run` stops here.
2. **build** — one mapped task per index, in the `csl_ddl` pool (default 1 slot; builds on one
   table never overlap whatever its size): `CONCURRENTLY`, outside a transaction, with
   `lock_timeout` and `statement_timeout`; a lock timeout is retried with backoff up to
   `max_lock_retries`, then reported with the blocking sessions; a failed build never leaves an
   INVALID index behind. Each outcome (duration, size, blockers) goes to `csl_ops.index_builds`.
   A failed build is not retried (the report says why); a build whose worker died is (once, after
   30 s, on any worker): the retry finds the index its earlier try finished, or drops the INVALID
   one it left and builds again.
3. **report** — what was built, failed or left alone; fails if any build failed.

Rerunning when everything is `ok` plans nothing and finishes at once.
Without Airflow: `python -m csl indexes plan|apply`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, XComArg

from csl_airflow.dags import csl_dag
from csl_airflow.maintenance import IndexBuildOperator, IndexPlanOperator, IndexReportOperator
from csl_airflow.params import full_match, param


@csl_dag(
    "csl_index_install",
    schedule="@weekly",
    tags=["database", "indexes"],
    doc_md=__doc__,
    retries=1,  # for a lost worker only: a build that fails (ProblemFound, BadInput) is never retried
    retry_delay=pendulum.duration(seconds=30),
    params={
        "dry_run": Param(False, type="boolean", description="Show the plan only; build nothing."),
        "only": Param([], type=["null", "array"], uniqueItems=True,
                      items={"type": "string", "pattern": full_match("[a-z_][a-z0-9_]{0,62}")},
                      description="Only these catalog indexes (names from include/sql/maintenance/index_catalog.sql); "
                                  "empty = all. An unknown name fails the plan before any DDL."),
        "lock_timeout_ms": Param(2000, type="integer", minimum=10, maximum=600_000,
                                 description="How long one build may wait for a lock before it gives up and "
                                             "retries (milliseconds)."),
        "statement_timeout_s": Param(3600, type="integer", minimum=1, maximum=86_400,
                                     description="Longest one build statement may run (seconds)."),
        "max_lock_retries": Param(3, type="integer", minimum=0, maximum=20,
                                  description="Retries after a lock timeout (exponential backoff) before the "
                                              "build is reported as blocked, with the blocking sessions."),
    },
)
def csl_index_install():
    plan = IndexPlanOperator(task_id="plan", only=param("only"), dry_run=param("dry_run"))
    build = IndexBuildOperator.partial(
        task_id="build",
        pool="csl_ddl",
        map_index_template="{{ index_name }}",
        lock_timeout_ms=param("lock_timeout_ms"),
        statement_timeout_s=param("statement_timeout_s"),
        max_lock_retries=param("max_lock_retries"),
    ).expand(item=plan.output)
    IndexReportOperator(task_id="report", summary=XComArg(plan, key="summary"), builds=XComArg(build, key="build"),
                        dry_run=param("dry_run"))


csl_index_install()
