"""
### Nightly VACUUM / ANALYZE, chosen by evidence, never blocking traffic

Replaces the platform's whole-database `VACUUM ANALYZE`.

1. **plan** — evidence per table (`pg_stat_user_tables`, `pg_class`, reloptions: dead tuples,
   rows changed/inserted since the last (auto)vacuum/analyze, size, `age(relfrozenxid)`,
   `mxid_age`), judged with autovacuum's own formula (per-table reloptions honoured) and the
   stricter `dead_ratio`. Candidates in order: **wraparound** (`VACUUM (FREEZE, ANALYZE)`),
   **dead_tuples** (`VACUUM (ANALYZE)`), **stale_statistics** (`ANALYZE` only), **insert_only**
   (`VACUUM` for the visibility map). Tables autovacuum handled in the last hour are skipped,
   with that reason. `dry_run` stops here.
2. **act** — one mapped task per table in the `csl_maintenance` pool (2 slots), outside a
   transaction, `SKIP_LOCKED` + `lock_timeout` + `statement_timeout`: a locked table is skipped
   and reported, never waited on. No new action starts after `max_duration_s`. Before/after
   figures go to `csl_ops.maintenance_actions`.
3. **report** — dead tuples removed, sizes, durations, what was skipped and why.

Without Airflow: `python -m csl maintenance plan|run`.
"""

from __future__ import annotations

from airflow.sdk import Param, XComArg

from csl_airflow.dags import csl_dag
from csl_airflow.maintenance import MaintenanceActOperator, MaintenancePlanOperator, MaintenanceReportOperator
from csl_airflow.params import full_match, param

IDENTIFIER = "[a-z_][a-z0-9_]{0,62}"


@csl_dag(
    "csl_db_maintenance",
    schedule="30 1 * * *",
    tags=["database", "maintenance"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", description="Show what would be done, with the evidence; run nothing."),
        "tables": Param([], type=["null", "array"], uniqueItems=True,
                        items={"type": "string", "pattern": full_match(f"(?:{IDENTIFIER}\\.)?{IDENTIFIER}")},
                        description="Only these tables (table or schema.table); empty = every user table. "
                                    "An unknown table fails the plan before anything runs."),
        "mode": Param("auto", type="string", enum=["auto", "analyze", "vacuum", "freeze"],
                      description="auto: the action each table's evidence calls for; analyze: ANALYZE only; "
                                  "vacuum: VACUUM (ANALYZE); freeze: VACUUM (FREEZE, ANALYZE)."),
        "max_tables": Param(50, type="integer", minimum=1, maximum=10_000,
                            description="At most this many tables tonight, most urgent first."),
        "dead_ratio": Param(0.1, type="number", exclusiveMinimum=0, maximum=1,
                            description="Vacuum when dead tuples exceed threshold + this × rows (only ever "
                                        "stricter than the table's autovacuum scale factor)."),
        "max_duration_s": Param(3600, type="integer", minimum=1, maximum=86_400,
                                description="Start no new action after this many seconds from the plan."),
    },
)
def csl_db_maintenance():
    plan = MaintenancePlanOperator(
        task_id="plan", tables=param("tables"), mode=param("mode"), max_tables=param("max_tables"),
        dead_ratio=param("dead_ratio"), dry_run=param("dry_run"),
    )
    act = MaintenanceActOperator.partial(
        task_id="act", pool="csl_maintenance", map_index_template="{{ table_name }}",
        started_at=XComArg(plan, key="started_at"), max_duration_s=param("max_duration_s"),
    ).expand(candidate=plan.output)
    MaintenanceReportOperator(task_id="report", plan=XComArg(plan, key="plan"), actions=XComArg(act, key="action"))


csl_db_maintenance()
