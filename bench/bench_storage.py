"""Integrity sweep vs ``rclone check`` on the two SeaweedFS endpoints, same run.

Two data sets, each its own database (platform schema, one ``audio_samples`` row per object)
and its own bucket on each endpoint: 10,000 and 100,000 objects of 256 B–2 KiB, mirrored,
with a few planted differences (missing on the fallback, orphans). Measured (three interleaved
rounds, the median kept):
- wall time of ``python -m csl storage sweep`` (8 shards, 2 worker processes, no download
  sampling: rclone does not download either) vs ``rclone check`` of the same two buckets
  (sizes + MD5 ETags), on the 100k set — target ≤ 1.0×;
- peak RSS of each (``wait4``), and of the sweep at 100k vs 10k — target flat, ≤ 1.2×.
Objects are uploaded once and reused by later runs (the bucket's count is checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import psycopg

from csl.config import Settings, load_env_file
from csl.migrations import migrate
from csl.storage import StorageProvider

REPO = Path(__file__).resolve().parents[1]
SETS = {"10k": 10_000, "100k": 100_000}
DEFECTS = 20  # of each kind: missing on the fallback, orphan on the primary
ROUNDS = 3


def object_key(i: int) -> str:
    digest = hashlib.md5(f"bench{i}".encode()).hexdigest()
    return f"samples/{digest[:2]}/{uuid.UUID(digest)}.wav"


def object_body(i: int) -> bytes:
    size = 256 + (i * 7919) % 1793
    return (b"RIFF" + f"{i:012d}".encode() * 200)[:size]


def _upload_range(args: tuple) -> int:
    settings_primary, settings_fallback, start, stop, n = args
    primary, fallback = StorageProvider(settings_primary), StorageProvider(settings_fallback)

    def put(i: int) -> int:
        key, body = object_key(i), object_body(i)
        if i < n:
            primary.put(key, body, content_type="audio/wav")
            if i % (n // DEFECTS) != 1:  # a few never reached the fallback
                fallback.put(key, body, content_type="audio/wav")
        else:  # orphans: objects no row refers to
            primary.put(key, body, content_type="audio/wav")
        return 1

    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(put, range(start, stop)))


def _count(provider: StorageProvider) -> int:
    return sum(1 for _ in provider.list_page_stream(""))


def prepare(stack, settings: Settings, name: str, n: int) -> tuple[str, StorageProvider, StorageProvider]:
    db = f"bench_storage_{name}"
    base = settings.require_database().primary_url.rsplit("/", 1)[0]
    url = f"{base}/{db}"
    exists = stack.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip()
    primary = StorageProvider(replace(settings.provider("primary"), bucket=f"bench-sweep-{name}"))
    fallback = StorageProvider(replace(settings.provider("fallback"), bucket=f"bench-sweep-{name}"))
    primary.ensure_bucket()
    fallback.ensure_bucket()
    total = n + DEFECTS
    if exists and _count(primary) == total:
        return url, primary, fallback
    stack.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {db} OWNER csl")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
        user = conn.execute("INSERT INTO users (email, name, role) VALUES ('bench@example.org', 'Bench', 'cultural_contributor') "
                            "RETURNING id").fetchone()[0]
        with conn.cursor() as cur, cur.copy(
                "COPY audio_samples (title, file_url, file_size, duration, format, sample_rate, cultural_origin, "
                "instrument_type, usage_rights, price_personal, price_commercial, price_enterprise, contributor_id) "
                "FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"bench {i}", object_key(i), len(object_body(i)), 1.0, "wav", 44100, "bench",
                                "drum", "personal", 1.0, 3.0, 10.0, user))
    chunks = [(primary.settings, fallback.settings, s, min(s + 5000, total), n) for s in range(0, total, 5000)]
    with ProcessPoolExecutor(max_workers=4) as pool:
        uploaded = sum(pool.map(_upload_range, chunks))
    assert uploaded == total, (uploaded, total)
    return url, primary, fallback


# The measured command runs under this small launcher, which forks it and reports its wait4
# rusage. Spawned straight from the benchmark, the command's ru_maxrss would start at the
# benchmark process's own high-water mark: Linux charges the image a child is forked (or
# vforked) from to the child's maxrss when it execs, so every figure below the parent's peak
# read as the parent's peak.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


class Measured(NamedTuple):
    wall_s: float
    maxrss_kib: int
    cpu_s: float  # user + system, the command and the children it waited for
    stdout: str
    stderr: str
    code: int


def run_measured(cmd: list[str], env: dict[str, str]) -> Measured:
    """Run ``cmd`` to the end: its wall time, peak RSS, CPU time, output and exit code."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-", suffix=".txt") as usage:
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, usage.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(launcher, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with ThreadPoolExecutor(max_workers=2) as pool:  # read both pipes so the child never blocks on one
            out = pool.submit(proc.stdout.read)
            err = pool.submit(proc.stderr.read)
            code = proc.wait()
            wall = time.perf_counter() - started
            stdout, stderr = out.result().decode(), err.result().decode()
        maxrss, cpu = (usage.read().split() or ["0", "0"])
    return Measured(wall, int(maxrss), float(cpu), stdout, stderr, code)


def database_env(stack_env: dict[str, str], url: str) -> dict[str, str]:
    """``DATABASE_URL`` for the benchmark's own database ``url``, and its read replica: the same
    database on the stack's standby (the stack's replica URL names the platform database)."""
    replica = stack_env.get("DATABASE_READ_REPLICA_URL")
    return {"DATABASE_URL": url,
            **({"DATABASE_READ_REPLICA_URL": f"{replica.rsplit('/', 1)[0]}/{url.rsplit('/', 1)[1]}"} if replica else {})}


def sweep(url: str, primary: StorageProvider, fallback: StorageProvider, stack_env: dict[str, str]) -> dict:
    env = {**os.environ, **stack_env, **database_env(stack_env, url), "MINIO_BUCKET": primary.bucket,
           "S3_BUCKET": fallback.bucket, "CSL_ENV_FILE": os.devnull}
    cmd = [sys.executable, "-m", "csl", "storage", "sweep", "--shards", "8", "--workers", "2", "--json"]
    wall, rss_kib, _cpu, out, err, code = run_measured(cmd, env)
    if code not in (0,):
        raise RuntimeError(f"sweep failed ({code}): {err[-2000:]}")
    summary = json.loads(out)["summary"]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss_kib / 1024, 1), "listed": summary["listed"],
            "findings": {k: sum(v.values()) for k, v in summary["findings"].items()}, "db_refs": summary["db_refs"],
            "inventory_from": summary["inventory_from"]}


def rclone_env(primary: StorageProvider, fallback: StorageProvider) -> dict[str, str]:
    """rclone's environment: remotes ``P`` (primary) and ``F`` (fallback), ``AWS_CA_BUNDLE`` unset."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    for remote, p in (("P", primary), ("F", fallback)):
        env.update({f"RCLONE_CONFIG_{remote}_TYPE": "s3", f"RCLONE_CONFIG_{remote}_PROVIDER": "Other",
                    f"RCLONE_CONFIG_{remote}_ENDPOINT": p.settings.endpoint_url,
                    f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": p.settings.access_key.reveal(),
                    f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": p.settings.secret_key.reveal(),
                    f"RCLONE_CONFIG_{remote}_FORCE_PATH_STYLE": "true",
                    f"RCLONE_CONFIG_{remote}_REGION": p.settings.region})
    return env


def rclone_check(primary: StorageProvider, fallback: StorageProvider) -> dict:
    cmd = ["rclone", "check", f"P:{primary.bucket}", f"F:{fallback.bucket}", "--checkers", "8", "--log-level",
           "ERROR"]
    wall, rss_kib, _cpu, _out, err, code = run_measured(cmd, rclone_env(primary, fallback))
    if code not in (0, 1):  # 1: differences found (there are planted ones)
        raise RuntimeError(f"rclone check failed ({code}): {err[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss_kib / 1024, 1), "exit": code,
            "differences_reported": err.count("ERROR")}


def run(stack, **_: object) -> dict:
    if shutil.which("rclone") is None:
        raise RuntimeError("rclone is not installed: make sysdeps installs it (Debian package rclone)")
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    settings = Settings.from_env(env)
    result: dict = {"sets": {}}
    prepared = {}
    for name, n in SETS.items():
        started = time.perf_counter()
        prepared[name] = prepare(stack, settings, name, n)
        result["sets"][name] = {"objects": n + DEFECTS, "prepare_s": round(time.perf_counter() - started, 1)}
    for name in SETS:
        url, primary, fallback = prepared[name]
        sweep(url, primary, fallback, env)  # warm: both contenders read a warm server and page cache
        runs: dict[str, list[dict]] = {"sweep": [], "rclone_check": []}
        for _ in range(ROUNDS):  # interleaved, so a noisy neighbour hurts both alike; the median is kept
            runs["sweep"].append(sweep(url, primary, fallback, env))
            runs["rclone_check"].append(rclone_check(primary, fallback))
        for contender, measured in runs.items():
            ordered = sorted(measured, key=lambda r: r["wall_s"])
            result["sets"][name][contender] = {**ordered[len(ordered) // 2],
                                               "all_wall_s": [r["wall_s"] for r in measured],
                                               "max_peak_rss_mb": max(r["peak_rss_mb"] for r in measured)}
    big, small = result["sets"]["100k"], result["sets"]["10k"]
    result["summary"] = {
        "sweep_100k_s": big["sweep"]["wall_s"],
        "rclone_check_100k_s": big["rclone_check"]["wall_s"],
        "sweep_vs_rclone_check_time_ratio": round(big["sweep"]["wall_s"] / big["rclone_check"]["wall_s"], 2),
        "sweep_peak_rss_mb_100k": big["sweep"]["max_peak_rss_mb"],
        "sweep_peak_rss_mb_10k": small["sweep"]["max_peak_rss_mb"],
        "sweep_rss_100k_vs_10k_ratio": round(big["sweep"]["max_peak_rss_mb"] / small["sweep"]["max_peak_rss_mb"], 2),
        "rclone_check_peak_rss_mb_100k": big["rclone_check"]["max_peak_rss_mb"],
        "findings_100k": big["sweep"]["findings"],
    }
    return result
