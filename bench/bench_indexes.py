"""All 23 declared indexes: ``csl indexes apply`` (CREATE INDEX CONCURRENTLY, with timeouts,
retries, verification, records) vs plain ``CREATE INDEX`` of the same definitions, same data,
same run; a concurrent writer's insert latency during each (plain builds block it)."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Self

import psycopg
from bench_seed import bench_database

from csl.config import Settings, load_env_file
from csl.maintenance import indexes


class Writer:
    """Inserts licence events one by one, as the platform would, timing each insert."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            license_id = conn.execute("SELECT id FROM licenses LIMIT 1").fetchone()[0]
            while not self._stop.is_set():
                started = time.perf_counter()
                conn.execute("INSERT INTO license_events (license_id, event_type, event_data) "
                             "VALUES (%s, 'bench-writer', '{}')", (license_id,))
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def figures(self) -> dict:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"inserts": 0}
        return {"inserts": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
                "max_ms": round(ordered[-1] * 1000, 2)}


def drop_declared(url: str, catalog) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for declared in catalog:
            conn.execute(f"DROP INDEX IF EXISTS {declared.name}")
        conn.execute("VACUUM ANALYZE")


def run(stack, **_: object) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    url = bench_database(stack, Settings.from_env(env))
    catalog = indexes.load_catalog()

    drop_declared(url, catalog)
    plain_per_index = {}
    with Writer(url) as plain_writer, psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for declared in catalog:
            t = time.perf_counter()
            conn.execute(declared.statement_for(table=f"public.{declared.table}"))
            plain_per_index[declared.name] = round(time.perf_counter() - t, 3)
        plain_s = time.perf_counter() - started

    drop_declared(url, catalog)
    with psycopg.connect(url, autocommit=True) as conn:
        plan = indexes.make_plan(indexes.diff(conn, catalog), catalog)
    with Writer(url) as online_writer:
        started = time.perf_counter()
        results = indexes.apply(lambda: psycopg.connect(url, autocommit=True), plan, catalog,
                                run_id=f"bench-{time.time_ns()}", lock_timeout_ms=5000, statement_timeout_s=3600)
        online_s = time.perf_counter() - started
    failed = [r.name for r in results if r.status != "success"]
    with psycopg.connect(url, autocommit=True) as conn:
        rerun_started = time.perf_counter()
        noop_plan = indexes.make_plan(indexes.diff(conn, catalog), catalog)
        rerun_s = time.perf_counter() - rerun_started
        rows = dict(conn.execute("SELECT relname, n_live_tup FROM pg_stat_user_tables "
                                 "WHERE relname IN ('licenses', 'payment_intents', 'license_events')").fetchall())
    result = {
        "rows": rows,
        "plain_create_index": {"total_s": round(plain_s, 2), "per_index_s": plain_per_index,
                               "writer": plain_writer.figures()},
        "csl_concurrent": {"total_s": round(online_s, 2),
                           "per_index_s": {r.name: round(r.duration_ms / 1000, 3) for r in results},
                           "failed": failed, "writer": online_writer.figures()},
        "noop_rerun_plan_s": round(rerun_s, 3),
        "noop_rerun_actions": sorted({i.action for i in noop_plan}),
    }
    result["summary"] = {
        "concurrent_vs_plain_time_ratio": round(online_s / plain_s, 2),
        "target_ratio": 1.3,
        "writer_p99_ms_during_concurrent": result["csl_concurrent"]["writer"].get("p99_ms"),
        "writer_max_ms_during_concurrent": result["csl_concurrent"]["writer"].get("max_ms"),
        "writer_max_ms_during_plain": result["plain_create_index"]["writer"].get("max_ms"),
        "failed": failed,
    }
    return result
