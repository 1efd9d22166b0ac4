"""One run of ours for ``bench_replication.py``: ``replicate(mode="diff")`` of a prefix from the
primary to the fallback, its figures as JSON on stdout.

A module of its own so that the run imports what a replication run needs (``csl.config`` and
``csl.storage.replication`` with what they use) and nothing of the benchmark's (its helpers,
migrations, rclone's set-up): start-up is part of what is measured. ``instrument`` wraps the
run's steps in timers (thread-seconds and the threads' own CPU); ``trust_checksums`` is the
what-if run that takes the destination's stored SHA-256 as evidence.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


class _Timers:
    """Thread-seconds (wall, and the thread's own CPU) and calls per label, summed over the
    run's threads. Labels nest (a copy's time includes its verification's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # the thread's own CPU time (not waiting for the GIL or the network)
        self.calls: dict[str, int] = {}

    def wrap(self, owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent, spent_cpu = time.perf_counter() - started, time.thread_time() - cpu
                with self.lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + spent
                    self.cpu[label] = self.cpu.get(label, 0.0) + spent_cpu
                    self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)

    def as_dict(self) -> dict:
        return {label: {"thread_s": round(s, 3), "thread_cpu_s": round(self.cpu[label], 3), "calls": self.calls[label]}
                for label, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


def _instrument(timers: _Timers) -> None:
    import boto3.session

    from csl.storage import StorageProvider, integrity, replication, transfer

    for owner, name, label in (
            (boto3.session.Session, "client", "boto3 client creation"),
            (replication, "plan_replication", "plan (wall)"),
            (replication, "_quick_look", "plan: quick look (wall)"),
            (replication, "_diff", "plan: diff sweep (wall)"),
            (integrity, "discover_cells", "plan: diff: discover cells"),
            (integrity, "sweep_and_record", "plan: diff: sweep the cells (list, merge, findings)"),
            (replication, "finish_sweep", "plan: diff: finish the sweep"),
            (StorageProvider, "_list_page", "list: one LIST request"),
            (replication, "_database_sizes", "plan: database sizes"),
            (replication, "examine", "plan: examine a key (HEAD on both)"),
            (replication, "_write_plan", "plan: write the plan rows"),
            (replication, "copy_shard", "copy (wall)"),
            (replication, "copy_object", "copy: copy_object (GET, PUT, verify, 'copied' update)"),
            (transfer, "_put_single", "copy: read source + PutObject"),
            (transfer, "_put_multipart", "copy: read source + multipart upload"),
            (transfer, "verify_stored", "verify: verify_stored (HEAD + proof)"),
            (StorageProvider, "digest", "verify: re-read and hash (digest)"),
            (replication._Copier, "_update", "db: row update (attempts, copied)"),
            (replication._Copier, "_settle", "db: settle a batch of proven rows (transaction)"),
            (replication._Copier, "_claim", "db: record attempts (a batch of rows)"),
            (replication, "_settle_findings", "db: settle findings (per key and at finish)"),
            (replication, "finish_replication", "finish (wall)")):
        timers.wrap(owner, name, label)


def child(spec: dict) -> int:
    started = time.perf_counter()
    from csl.config import Settings
    from csl.storage import transfer
    from csl.storage.replication import ReplicationOptions, replicate

    imported = time.perf_counter()
    timers = _Timers()
    if spec["instrument"]:
        _instrument(timers)
    if spec["trust_checksums"]:  # what-if: the destination's stored x-amz-checksum-sha256 is evidence
        transfer._trusts_checksums = lambda provider: True
    settings = Settings.from_env(os.environ)
    options = ReplicationOptions(mode="diff", prefix=spec["prefix"], source="primary", destination="fallback",
                                 concurrency=spec["concurrency"], multipart_threshold_mb=spec["multipart_threshold_mb"],
                                 max_objects=1_000_000, max_bytes=1 << 40)
    planned_at: list[float] = []
    plan, summary = replicate(settings, run_key=spec["run_key"], options=options,
                              provider_names=["primary", "fallback"],
                              on_plan=lambda p: planned_at.append(time.perf_counter()))
    summary.check()
    finished = time.perf_counter()
    out = {"quick_look": plan.quick_look, "planned": summary.planned, "verified": summary.verified,
           "skipped": summary.skipped,
           "bytes": summary.bytes, "by_method": summary.by_method, "by_verification": summary.by_verification,
           "inventory_from": summary.inventory_from, "run_duration_s": summary.duration_s,
           "plan_totals": {k: v for k, v in plan.totals().items() if k != "by_reason"},
           "phases_s": {"imports": round(imported - started, 2), "plan": round(planned_at[0] - imported, 2),
                        "copy_and_finish": round(finished - planned_at[0], 2)}}
    if spec["instrument"]:
        import psycopg

        out["timers"] = timers.as_dict()
        with psycopg.connect(settings.require_database().primary_url) as conn:
            rows = conn.execute("SELECT count(*), coalesce(sum(duration_s), 0), coalesce(avg(duration_s), 0), "
                                "coalesce(max(duration_s), 0) FROM csl_ops.replication_copies WHERE run_id = %s",
                                (summary.run_id,)).fetchone()
        out["copy_rows_duration_s"] = {"rows": rows[0], "sum": round(float(rows[1]), 2),
                                       "avg": round(float(rows[2]), 4), "max": round(float(rows[3]), 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SPEC (run the benchmark with bench/run.py replication)")
    if os.environ.get("CSL_BENCH_PROFILE_TO"):  # development: a cProfile of each of our runs
        import cProfile

        target = f"{os.environ['CSL_BENCH_PROFILE_TO']}.{json.loads(sys.argv[1])['run_key']}.prof"
        sys.exit(cProfile.run("child(json.loads(sys.argv[1]))", target) or 0)
    sys.exit(child(json.loads(sys.argv[1])))
