"""
### Performance report: hourly statistics snapshots, a report every morning (or on demand)

Replaces the platform's `analyzePerformance()` (which read columns that do not exist and only
cumulative `pg_stat_statements`).

1. **snapshot** — every hour: `pg_stat_statements` (by query id), table and index activity and
   I/O, sizes, connections by state, replica lag, and the read replica's own index scans, copied
   into `csl_ops`; statistics resets and deallocated entries are detected so no figure is ever
   negative; texts that may carry a secret are stored redacted. Snapshots older than
   `retention_days` and reports older than `report_retention_days` are removed.
2. **report** — at `report_hour_utc` (and on every manual run): deltas over `window_hours`
   ending at this run's snapshot → top queries (total/mean time, calls, I/O), **regressions**
   (mean time up ≥ `regression_pct` vs the previous window, ≥ `min_calls` calls in both),
   unused / duplicate / INVALID indexes (never primary keys, unique or constraint indexes;
   *unused* only after `unused_index_days` without a scan on the primary and on every replica;
   an index of the declared catalog is never given a `DROP INDEX`),
   **missing-index advice verified with HypoPG** (planned as `advisor_role`, read-only; suggested
   only when the plan cost drops ≥ `min_cost_drop_pct`, with the `CREATE INDEX CONCURRENTLY` to
   run), bloat, dead tuples,
   vacuum/analyze staleness, wraparound, sequences, cache hit ratio, sessions, replicas and
   what our own pipelines did. Every recommendation names its evidence.

Output: one self-contained HTML page with charts + CSV/JSON of every table, in
`csl_ops.perf_reports` and on disk; open it from the task's **Performance report** link or
**Browse → Performance reports**.

Without Airflow: `python -m csl snapshot` and `python -m csl report --window 24h --out DIR`.
"""

from __future__ import annotations

from airflow.sdk import Param

from csl_airflow.dags import csl_dag
from csl_airflow.params import param
from csl_airflow.reports import PerfReportOperator, PerfSnapshotOperator


@csl_dag(
    "csl_performance_report",
    schedule="@hourly",
    tags=["database", "report"],
    doc_md=__doc__,
    params={
        "make_report": Param("auto", type="string", enum=["auto", "always", "never"],
                             description="auto: manual runs always report, scheduled runs only at report_hour_utc; "
                                         "always / never: every run / snapshot only."),
        "report_hour_utc": Param(5, type="integer", minimum=0, maximum=23,
                                 description="Hour (UTC) whose scheduled run makes the daily report."),
        "window_hours": Param(24, type="number", minimum=0.05, maximum=2160,
                              description="Report window in hours, ending at this run's snapshot (max 90 days)."),
        "top": Param(15, type="integer", minimum=1, maximum=500, description="Rows per top-queries table."),
        "regression_pct": Param(50, type="number", minimum=1, maximum=10_000,
                                description="Flag a query whose mean time grew by at least this many percent "
                                            "vs the previous window."),
        "min_calls": Param(20, type="integer", minimum=1, maximum=1_000_000_000,
                           description="Calls a query needs in both windows for a regression to count."),
        "min_cost_drop_pct": Param(50, type="number", minimum=1, maximum=100,
                                   description="HypoPG: suggest an index only when the plan cost drops by this much."),
        "advise_queries": Param(10, type="integer", minimum=0, maximum=100,
                                description="HypoPG: how many of the slowest queries to cost (0: no advice)."),
        "exact_bloat_tables": Param([], type=["null", "array"], uniqueItems=True,
                                    items={"type": "string", "pattern": "^[a-z_][a-z0-9_]*\\.[a-z_][a-z0-9_]*$"},
                                    description="Exact bloat (pgstattuple_approx, reads the table) for these "
                                                "schema.table names; empty or null: the statistics estimate only."),
        "unused_index_days": Param(7, type="number", minimum=0.001, maximum=3650,
                                   description="Days of statistics without a scan on the primary and on every "
                                               "replica before an index is called unused (and given a DROP INDEX)."),
        "advisor_role": Param("csl_advisor", type="string", pattern="^[A-Za-z_][A-Za-z0-9_$]{0,62}$",
                              description="HypoPG plans query texts as this role (it must not be able to write); "
                                          "missing or writable: no advice, never as the owner."),
        "retention_days": Param(30, type="integer", minimum=1, maximum=3650,
                                description="Snapshots older than this many days are removed."),
        "report_retention_days": Param(90, type="integer", minimum=1, maximum=3650,
                                       description="Stored reports (and their folders) older than this many days "
                                                   "are removed, on every run."),
    },
)
def csl_performance_report():
    snapshot = PerfSnapshotOperator(task_id="snapshot", retention_days=param("retention_days"),
                                    report_retention_days=param("report_retention_days"))
    PerfReportOperator(
        task_id="report", snapshot=snapshot.output,
        make_report=param("make_report"), report_hour_utc=param("report_hour_utc"),
        window_hours=param("window_hours"), top=param("top"), regression_pct=param("regression_pct"),
        min_calls=param("min_calls"), min_cost_drop_pct=param("min_cost_drop_pct"),
        advise_queries=param("advise_queries"), exact_bloat_tables=param("exact_bloat_tables"),
        unused_index_days=param("unused_index_days"), advisor_role=param("advisor_role"),
        report_retention_days=param("report_retention_days"),
    )

csl_performance_report()
