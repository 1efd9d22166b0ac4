"""Seed loading at bench scale vs a bare ``COPY`` of the same CSV files, same run.

- ``csl seed`` path: generate the CSVs (Python, deterministic) + COPY them in one transaction
  (``csl.devdata.seed.load``: FK order, then ANALYZE);
- anchor: ``psql \\copy`` of the very same files into an identical empty schema, one
  transaction — the floor for getting these rows into PostgreSQL;
- objects: the 100k+ sample/generation objects uploaded to the primary provider.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from csl.config import Settings, load_env_file
from csl.devdata.seed import COLUMNS, SCALES, TABLE_ORDER, generate, load, upload_objects
from csl.migrations import migrate
from csl.storage import StorageProvider

REPO = Path(__file__).resolve().parents[1]
BENCH_DB = "bench_platform"  # left loaded for the other benchmarks (bench_indexes, …)
# bumped when the generator's rows change, so a loaded bench database is loaded again
# (2: payout accounts and disputes, issue 12; a dispute never exceeds what was not refunded)
BENCH_DATASET = 2


def _fresh_db(stack, name: str, base_url: str) -> str:
    stack.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {name} OWNER csl")
    url = base_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
    return url


def bench_database(stack, settings: Settings) -> str:
    """The bench-scale platform database, loaded once (rows only) and reused by other benchmarks."""
    base = settings.require_database().primary_url
    url = base.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            loaded = conn.execute("SELECT (counts->>'licenses')::bigint, counts->>'bench_dataset' "
                                  "FROM csl_ops.seed_runs WHERE scale = 'bench' ORDER BY 1 DESC LIMIT 1").fetchone()
            # else the scale or the generator's data changed: load it again
            if loaded and loaded[0] == SCALES["bench"].licenses and loaded[1] == str(BENCH_DATASET):
                migrate(conn, components=("csl_ops",))  # later migrations, for the newer benchmarks
                return url
    except psycopg.Error:
        pass
    url = _fresh_db(stack, BENCH_DB, base)
    scratch = REPO / "bench" / "scratch" / "seed"
    generated = generate(SCALES["bench"], scratch, seed=42)
    with psycopg.connect(url, autocommit=True) as conn:
        load(conn, generated)
        conn.execute("INSERT INTO csl_ops.seed_runs (scale, seed, counts) VALUES ('bench', 42, %s)",
                     (json.dumps({**generated.counts, "bench_dataset": BENCH_DATASET}),))
    shutil.rmtree(scratch, ignore_errors=True)
    return url


def run(stack, *, objects: bool = True) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    settings = Settings.from_env(env)
    base = settings.require_database().primary_url
    scale = SCALES["bench"]
    scratch = REPO / "bench" / "scratch" / "seed"
    shutil.rmtree(scratch, ignore_errors=True)

    seed_url = _fresh_db(stack, BENCH_DB, base)
    started = time.perf_counter()
    generated = generate(scale, scratch, seed=42)
    generate_s = time.perf_counter() - started
    with psycopg.connect(seed_url, autocommit=True) as conn:
        started = time.perf_counter()
        per_table = load(conn, generated)
        copy_s = time.perf_counter() - started
        conn.execute("INSERT INTO csl_ops.seed_runs (scale, seed, counts) VALUES ('bench', 42, %s)",
                     (json.dumps({**generated.counts, "bench_dataset": BENCH_DATASET}),))
    rows = sum(generated.counts.values())

    bare_url = _fresh_db(stack, "bench_bare_copy", base)
    script = ["\\set ON_ERROR_STOP on", "BEGIN;"]
    for table in TABLE_ORDER:
        script.append(f"\\copy {table} ({', '.join(COLUMNS[table])}) FROM '{scratch / (table + '.csv')}' WITH (FORMAT csv)")
    script.append("COMMIT;")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write("\n".join(script) + "\n")
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-f", handle.name, bare_url], check=True)
    bare_s = time.perf_counter() - started
    Path(handle.name).unlink()

    result: dict = {
        "scale": "bench",
        "rows": rows,
        "counts": generated.counts,
        "seed": {"generate_s": round(generate_s, 2), "copy_s": round(copy_s, 2),
                 "total_s": round(generate_s + copy_s, 2),
                 "rows_per_s": round(rows / (generate_s + copy_s)),
                 "copy_only_rows_per_s": round(rows / copy_s),
                 "copy_per_table_s": {t: round(s, 2) for t, s in per_table.items()}},
        "anchor_bare_copy": {"total_s": round(bare_s, 2), "rows_per_s": round(rows / bare_s)},
    }
    result["summary"] = {
        "seed_rows_per_s": result["seed"]["rows_per_s"],
        "bare_copy_rows_per_s": result["anchor_bare_copy"]["rows_per_s"],
        "seed_vs_bare_copy_time_ratio": round((generate_s + copy_s) / bare_s, 2),
        "seed_copy_step_vs_bare_copy_ratio": round(copy_s / bare_s, 2),
    }
    if objects:
        primary = StorageProvider(settings.provider("primary"))
        fallback = StorageProvider(settings.provider("fallback"))
        started = time.perf_counter()
        uploaded = upload_objects(generated, primary, fallback, workers=32)
        upload_s = time.perf_counter() - started
        total = sum(uploaded.values())
        result["objects"] = {"counts": uploaded, "total": total, "upload_s": round(upload_s, 1),
                             "objects_per_s": round(total / upload_s)}
        result["summary"]["objects_uploaded"] = total
        result["summary"]["objects_per_s"] = result["objects"]["objects_per_s"]
    for name in ("bench_bare_copy",):
        stack.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    shutil.rmtree(scratch, ignore_errors=True)
    return result
