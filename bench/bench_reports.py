"""The performance report on bench-scale data (1M licences) after a recorded workload:
snapshot capture cost (ms per snapshot, rows written) vs a bare read of the same statistics
views into the client (the anchor: what any capture must at least pay), and the full report
(fresh snapshot, deltas, analysis, HypoPG advice, HTML + CSV/JSON) vs its 15 s target on 2
cores; the report's size; and the HypoPG figure vs BENCH_ANCHORS (licences by usage_terms:
seq scan cost 16,518 → 4)."""

from __future__ import annotations

import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from bench_seed import bench_database

from csl import reports
from csl.config import Settings, load_env_file

SNAPSHOTS = 5
TARGET_REPORT_S = 15.0
# The recorded workload: the platform's read and write shapes, fixed parameters (seeded).
WORKLOAD = [
    ("SELECT id, price FROM licenses WHERE usage_terms = %s", "terms", 8),
    ("SELECT id, user_id FROM licenses WHERE expiry_date = %s", "expiry", 8),  # selective; the catalog may index it
    ("SELECT count(*) FROM licenses WHERE user_id = %s", "user", 300),
    ("SELECT id, license_type, price FROM licenses WHERE user_id = %s AND active ORDER BY created_at DESC LIMIT 20",
     "user", 300),
    ("SELECT license_type, count(*), sum(price) FROM licenses WHERE created_at >= %s GROUP BY 1", "since", 4),
    ("UPDATE licenses SET downloads_used = downloads_used + 1 WHERE id = %s", "licence", 300),
]
BARE_READS = [
    "SELECT * FROM pg_stat_statements",
    "SELECT * FROM pg_stat_user_tables t JOIN pg_statio_user_tables USING (relid)",
    "SELECT * FROM pg_stat_user_indexes JOIN pg_statio_user_indexes USING (indexrelid)",
    "SELECT pg_table_size(relid), pg_indexes_size(relid) FROM pg_stat_user_tables",
    "SELECT state, count(*) FROM pg_stat_activity GROUP BY 1",
    "SELECT * FROM pg_stat_replication",
]


def run_workload(url: str, rng: random.Random) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        users = [r[0] for r in conn.execute("SELECT user_id FROM licenses TABLESAMPLE SYSTEM (1) LIMIT 500")]
        licences = [r[0] for r in conn.execute("SELECT id FROM licenses TABLESAMPLE SYSTEM (1) LIMIT 500")]
        terms = [r[0] for r in conn.execute("SELECT DISTINCT usage_terms FROM licenses TABLESAMPLE SYSTEM (1)"
                                            " WHERE usage_terms IS NOT NULL LIMIT 20")] or ["standard"]
        expiries = [r[0] for r in conn.execute("SELECT expiry_date FROM licenses TABLESAMPLE SYSTEM (1)"
                                               " WHERE expiry_date IS NOT NULL LIMIT 50")] or ["2026-01-01"]
        values = {"user": users, "licence": licences, "terms": terms, "expiry": expiries,
                  "since": ["2025-06-01", "2025-09-01", "2025-12-01", "2026-03-01"]}
        started, calls = time.perf_counter(), 0
        for query, kind, times in WORKLOAD:
            for _ in range(times):
                conn.execute(query, (rng.choice(values[kind]),))
                calls += 1
    return {"calls": calls, "wall_s": round(time.perf_counter() - started, 2)}


def run(stack, **_: object) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    settings = Settings.from_env(env)
    url = bench_database(stack, settings)
    replica_url = settings.require_database().replica_url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
    replicas = {"replica": lambda: psycopg.connect(replica_url, autocommit=True)}  # read as the DAG does
    rng = random.Random(42)
    with psycopg.connect(url, autocommit=True) as conn:
        for name in ("licenses_usage_terms_idx", "licenses_expiry_date_idx"):  # an earlier run's advice, if taken
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        first = reports.capture(conn, replicas=replicas)  # the window's baseline
        workload = run_workload(url, rng)

        bare = []
        for _ in range(SNAPSHOTS):
            started = time.perf_counter()
            for query in BARE_READS:
                conn.execute(query).fetchall()
            bare.append((time.perf_counter() - started) * 1000)
        snaps = [reports.capture(conn, replicas=replicas) for _ in range(SNAPSHOTS)]
        capture_ms = [s.capture_ms for s in snaps]
        rows = conn.execute("SELECT count(*) FROM csl_ops.perf_snapshot_statements WHERE snapshot_id = %s",
                            (snaps[-1].id,)).fetchone()[0]

        run_workload(url, rng)  # the window the report looks at
        with tempfile.TemporaryDirectory(prefix="csl-bench-report-") as out:
            started = time.perf_counter()
            result = reports.make_report(conn, reports.ReportParams(window="1h"), run_key=f"bench-{time.time_ns()}",
                                         out_dir=Path(out), replicas=replicas)
            report_s = time.perf_counter() - started
            files = sorted(Path(result["path"]).iterdir())
            files_bytes = sum(p.stat().st_size for p in files)
        costed = {a["query"]: a for a in result["report"]["tables"]["index_advice"]}
        advice = {key: costed.get(query.replace("%s", "$1")) for key, query in
                  (("usage_terms", WORKLOAD[0][0]), ("expiry_date", WORKLOAD[1][0]))}
        served_by = {}  # a query without advice: which existing index its plan already uses, if any
        for key, (query, sample) in (("usage_terms", (WORKLOAD[0][0], "personal")),
                                     ("expiry_date", (WORKLOAD[1][0], "2026-01-01"))):
            plan = json.dumps(conn.execute("EXPLAIN (FORMAT JSON) " + query, (sample,)).fetchone()[0])
            served_by[key] = sorted(set(re.findall(r'"Index Name": "([^"]+)"', plan)))
        conn.execute("DELETE FROM csl_ops.perf_snapshots WHERE id >= %s", (first.id,))  # leave the bench DB as found
    result_out = {
        "workload": workload,
        "capture": {"ms_per_snapshot": capture_ms, "median_ms": statistics.median(capture_ms),
                    "rows_written": snaps[-1].rows_written, "statement_rows": rows},
        "bare_view_reads": {"ms": [round(b, 1) for b in bare], "median_ms": round(statistics.median(bare), 1)},
        "report": {"wall_s": round(report_s, 2), "target_s": TARGET_REPORT_S, "html_bytes": result["html_bytes"],
                   "files": len(files), "files_bytes": files_bytes, "summary": result["summary"],
                   "baseline_snapshot_id": result["meta"]["baseline_snapshot_id"]},
        "hypopg": {key: a and {k: a[k] for k in ("suggested", "cost_before", "cost_after", "cost_drop_pct", "reason",
                                                  "statement")} for key, a in advice.items()},
        "hypopg_anchor": {"cost_before": 16518, "cost_after": 4},
    }
    result_out["summary"] = {
        "capture_median_ms": result_out["capture"]["median_ms"],
        "capture_vs_bare_reads": round(statistics.median(capture_ms) / max(statistics.median(bare), 0.1), 2),
        "rows_per_snapshot": snaps[-1].rows_written,
        "report_s": result_out["report"]["wall_s"],
        "report_target_s": TARGET_REPORT_S,
        "html_kb": round(result["html_bytes"] / 1024, 1),
        "hypopg": {key: (f"{a['cost_before']:,.0f} → {a['cost_after']:,.0f} ({'suggested' if a['suggested'] else 'not'})"
                         if a and a["cost_after"] is not None else (a or {}).get("reason")
                         or f"no advice: already served by {', '.join(served_by[key]) or 'no index (not costed)'}")
                for key, a in advice.items()},
    }
    return result_out
