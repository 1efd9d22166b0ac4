"""Nightly maintenance on bench-scale data after a bloat workload: ``csl maintenance run``
(only the tables the evidence points at) vs a plain whole-database ``VACUUM ANALYZE`` after
the same workload, same run: dead tuples removed and wall time."""

from __future__ import annotations

import time

import psycopg

from bench_seed import bench_database
from csl.config import Settings, load_env_file
from csl.maintenance import vacuum

BLOATED = ("licenses", "payment_intents", "license_events")
WORKLOAD = [
    "UPDATE licenses SET downloads_used = downloads_used + 1 WHERE abs(hashtext(id::text)) % 4 = 0",
    "UPDATE payment_intents SET updated_at = updated_at + interval '1 second' WHERE abs(hashtext(id)) % 5 = 0",
    "DELETE FROM license_events WHERE event_type = 'renewed' AND abs(hashtext(id::text)) % 3 = 0",
    "INSERT INTO license_events (license_id, event_type, created_at) "
    "SELECT id, 'renewed', created_at FROM licenses WHERE abs(hashtext(id::text)) % 15 = 1",
]


def dead_tuples(conn: psycopg.Connection) -> int:
    time.sleep(0.5)
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(conn.execute("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables").fetchone()[0])


def bloat(conn: psycopg.Connection) -> float:
    started = time.perf_counter()
    for statement in WORKLOAD:
        conn.execute(statement)
    vacuum.wait_for_cleanup_horizon(conn, timeout_s=60)
    return time.perf_counter() - started


def run(stack, **_: object) -> dict:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    url = bench_database(stack, Settings.from_env(env))
    with psycopg.connect(url, autocommit=True) as conn:
        for table in BLOATED:  # autovacuum must not clean up behind either contender's back
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        try:
            conn.execute("VACUUM ANALYZE")
            vacuum.wait_for_cleanup_horizon(conn, timeout_s=60)

            bloat(conn)
            dead_before_ours = dead_tuples(conn)
            started = time.perf_counter()
            # dead_ratio 0.02 (stricter than autovacuum's 0.2): every table with real bloat is chosen,
            # so both contenders remove the same dead tuples
            outcome = vacuum.run(lambda: psycopg.connect(url, autocommit=True), vacuum.Policy(dead_ratio=0.02),
                                 run_id=f"bench-{time.time_ns()}", workers=2)  # the DAG's pool: 2 slots
            ours_s = time.perf_counter() - started
            dead_after_ours = dead_tuples(conn)

            conn.execute("VACUUM")  # untimed: both contenders start from the same clean state
            vacuum.wait_for_cleanup_horizon(conn, timeout_s=60)
            bloat(conn)
            dead_before_plain = dead_tuples(conn)
            started = time.perf_counter()
            conn.execute("VACUUM ANALYZE")
            plain_s = time.perf_counter() - started
            dead_after_plain = dead_tuples(conn)
            tables = conn.execute("SELECT count(*) FROM pg_stat_user_tables").fetchone()[0]
            # what skipping can save at most: the plain run's work on the tables ours left alone,
            # timed table by table right after it (they were just as clean before it)
            touched = {f"{r['schema']}.{r['table']}" for r in outcome["results"]}
            skippable_s = 0.0
            for (qualified,) in conn.execute("SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables"
                                             ).fetchall():
                if qualified.replace('"', "") in touched:
                    continue
                started = time.perf_counter()
                conn.execute(f"VACUUM ANALYZE {qualified}")
                skippable_s += time.perf_counter() - started
        finally:
            for table in BLOATED:
                conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    removed_ours = dead_before_ours - dead_after_ours
    removed_plain = dead_before_plain - dead_after_plain
    result = {
        "user_tables": tables,
        "csl_maintenance": {"wall_s": round(ours_s, 2), "dead_before": dead_before_ours, "dead_after": dead_after_ours,
                            "dead_removed": removed_ours, "actions": outcome["summary"]["tables"]},
        "plain_vacuum_analyze": {"wall_s": round(plain_s, 2), "dead_before": dead_before_plain,
                                 "dead_after": dead_after_plain, "dead_removed": removed_plain},
    }
    result["summary"] = {
        "time_ratio_vs_plain": round(ours_s / plain_s, 2),
        "target_ratio": 0.5,
        "dead_removed_ours": removed_ours,
        "dead_removed_plain": removed_plain,
        "tables_touched_ours": len(outcome["results"]),
        "tables_touched_plain": tables,
        "plain_time_on_skipped_tables_s": round(skippable_s, 2),
        "best_possible_ratio_by_skipping": round((plain_s - skippable_s) / plain_s, 2),
    }
    return result
