"""Full settlement of the bench-scale data (≥ 1M completed licences) vs a bare
``INSERT … SELECT`` computing the same direct splits, same run; a no-op rerun; the worker's
peak RSS (the settlement runs in a child process so its memory is its own).

Two anchors, both the same bare statement over the same rows:

- into a fresh table (a uuid key, one index, one foreign key): the issue's anchor;
- into ``revenue_splits`` itself (rolled back): the table the settlement must write its new
  splits to, with the platform's and the index catalogue's 7 indexes and 2 foreign keys.
  The settlement writes more rows there than the anchor (generation licences have several
  contributors), so this is the floor of the one write the settlement cannot avoid, not a
  measure of the ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from bench_seed import BENCH_DB, bench_database

from csl.config import Settings, load_env_file

REPO = Path(__file__).resolve().parents[1]
WORK_DB = "bench_settlement"
ANCHOR = """
CREATE TABLE bench_anchor_splits (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    license_id uuid NOT NULL REFERENCES licenses (id),
    contributor_id uuid NOT NULL,
    amount double precision NOT NULL,
    percentage double precision NOT NULL
);
CREATE INDEX ON bench_anchor_splits (contributor_id);
INSERT INTO bench_anchor_splits (license_id, contributor_id, amount, percentage)
SELECT l.id, s.contributor_id, round((l.price * 0.7)::numeric, 2), 70
FROM licenses l JOIN audio_samples s ON s.id = l.audio_sample_id
WHERE l.payment_status = 'completed';
"""
ANCHOR_PLATFORM = """
BEGIN;
INSERT INTO revenue_splits (license_id, contributor_id, amount, percentage, status)
SELECT l.id, s.contributor_id, round((l.price * 0.7)::numeric, 2), 70, 'pending'
FROM licenses l JOIN audio_samples s ON s.id = l.audio_sample_id
WHERE l.payment_status = 'completed';
ROLLBACK;
"""
WORKER = """
import json, os, resource, sys, time, psycopg
sys.path.insert(0, {include!r})
from csl import settlement
with psycopg.connect(os.environ["CSL_BENCH_URL"], autocommit=True) as conn:
    started = time.perf_counter()
    out = settlement.settle(conn, settlement.Params(), run_key={key!r})
    wall = time.perf_counter() - started
print(json.dumps({{"wall_s": wall, "licences": out.licences, "payouts": len(out.payouts),
                  "clawbacks": out.clawbacks, "timings_s": out.timings_s, "status": out.status,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}, default=str))
"""


def _worker(url: str, key: str) -> dict:
    import os

    from csl.config import redact

    code = WORKER.format(include=str(REPO / "include"), key=key)
    started = time.perf_counter()
    # the URL (with its password) in the environment, never in the command line
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "CSL_BENCH_URL": url}, check=False)
    if result.returncode:
        raise RuntimeError(f"settlement worker {key!r} failed: {redact(result.stderr[-3000:], url)}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = round(time.perf_counter() - started, 2)
    return figures


def run(stack, **_: object) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    base = bench_database(stack, Settings.from_env(env))
    stack.psql(f"DROP DATABASE IF EXISTS {WORK_DB} WITH (FORCE)")
    started = time.perf_counter()
    stack.psql(f"CREATE DATABASE {WORK_DB} TEMPLATE {BENCH_DB} OWNER csl")
    copy_s = time.perf_counter() - started
    url = base.rsplit("/", 1)[0] + f"/{WORK_DB}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        completed = conn.execute("SELECT count(*) FROM licenses WHERE payment_status = 'completed'").fetchone()[0]
        started = time.perf_counter()
        conn.execute(ANCHOR)
        anchor_s = time.perf_counter() - started
        anchor_rows = conn.execute("SELECT count(*) FROM bench_anchor_splits").fetchone()[0]
        conn.execute("DROP TABLE bench_anchor_splits")
    # the platform-table anchor in a copy of its own: its rolled-back rows leave nothing behind
    # in the settlement's revenue_splits (dead tuples, split index pages)
    stack.psql(f"DROP DATABASE IF EXISTS {WORK_DB}_anchor WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {WORK_DB}_anchor TEMPLATE {BENCH_DB} OWNER csl")
    with psycopg.connect(f"{url}_anchor", autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        started = time.perf_counter()
        conn.execute(ANCHOR_PLATFORM)
        anchor_platform_s = time.perf_counter() - started
    stack.psql(f"DROP DATABASE IF EXISTS {WORK_DB}_anchor WITH (FORCE)")
    full = _worker(url, "bench-full")
    noop = _worker(url, "bench-noop")
    stack.psql(f"DROP DATABASE IF EXISTS {WORK_DB} WITH (FORCE)")
    return {
        "completed_licences": completed,
        "database_copy_s": round(copy_s, 1),
        "anchor_bare_insert_select": {"wall_s": round(anchor_s, 2), "rows": anchor_rows},
        "anchor_bare_insert_select_into_revenue_splits": {"wall_s": round(anchor_platform_s, 2), "rows": anchor_rows},
        "settlement_full": full,
        "settlement_noop_rerun": noop,
        "summary": {
            "full_vs_bare_insert_ratio": round(full["wall_s"] / anchor_s, 2),
            "target_ratio": 1.5,
            "full_vs_bare_insert_into_revenue_splits_ratio": round(full["wall_s"] / anchor_platform_s, 2),
            # the one write the settlement shares with the anchors, timed inside the run
            "settlement_revenue_splits_insert_s": (full.get("timings_s") or {}).get("post_sales.revenue_splits"),
            "noop_rerun_s": round(noop["wall_s"], 2),
            "noop_target_s": 2.0,
            "worker_peak_rss_mb": round(full["maxrss_mb"], 1),
            "licences_settled": full["licences"],
        },
    }
