"""Replication (``csl.storage.replication.replicate``) vs ``rclone copy --checksum``, same run.

One bucket on each SeaweedFS endpoint (``bench-replication``), one database (platform schema,
one ``audio_samples`` row per object). The source objects live on the primary and carry their
``sha256`` metadata; the destination is the fallback. Cases, each contender in turn on the
same buckets (the destination's objects deleted before each contender's copy):

- ``many``: 5,000 objects × 256 KiB (``bench-many/<hh>/<uuid>.wav``, the production layout);
- ``big``: 4 objects × 256 MiB (multipart on both sides: our threshold 8 MiB, rclone's upload
  cutoff 200 MiB);
- then a no-op rerun of each contender on the complete destination (ours must take its quick
  look: nothing owed, no sweep recorded).

Before the cases, the floor any run of ours pays before its first request, in the same
environment: the interpreter alone, the interpreter importing psycopg, and the imports of a
replication run (``floor``; ``summary.big_noop_floor_ratio`` sets the psycopg import against
rclone's whole big no-op).

Ours is ``replicate(mode="diff", prefix=…)``: a sweep of the prefix over both providers (rclone
lists both sides too), the plan (HEADs), streamed copies verified by SHA-256, every copy logged.
Each of our runs is a subprocess (``replication_child.py``: it imports what a replication run
needs, nothing of the benchmark's), so its peak RSS comes from
``wait4`` as rclone's does. Rounds interleave the contenders (the first alternates); the median
is kept; wall time, peak RSS and CPU time (user + system) are recorded for both. After the
rounds, one instrumented run of ours per case (and its no-op rerun) splits its time into the
diff sweep, the plan's HEADs, the copy, verification and database updates (thread-seconds and
the threads' own CPU), a what-if run shows the copy with the destination's stored SHA-256
trusted instead of re-read, and for ``many`` one run each at half and double our concurrency
shows whether 8 was a fair choice.

``CSL_BENCH_SCALE=small`` (200 × 256 KiB, 2 × 32 MiB) and ``medium`` (500 × 256 KiB, 2 × 64 MiB) are for
development; ``CSL_BENCH_ROUNDS``
overrides the rounds. Buckets and the database are removed at the end.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psycopg
from bench_storage import (  # bench/ is on the path (bench/run.py; the child's own folder)
    database_env,
    rclone_env,
    run_measured,
)

from csl.config import Settings, load_env_file
from csl.migrations import migrate
from csl.storage import StorageProvider

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("replication_child.py")  # one run of ours

KiB, MiB = 1 << 10, 1 << 20
SCALES = {
    "full": {"many": (5_000, 256 * KiB), "big": (4, 256 * MiB)},
    "medium": {"many": (500, 256 * KiB), "big": (2, 64 * MiB)},
    "small": {"many": (200, 256 * KiB), "big": (2, 32 * MiB)},
}
PREFIXES = {"many": "bench-many/", "big": "bench-big/"}
BUCKET = "bench-replication"
DATABASE = "bench_replication"
ROUNDS = 3
CONCURRENCY = 8  # ours: keys at a time (plan HEADs and copies); rclone: 4 transfers + 8 checkers
THRESHOLD_MB = 8  # ours: the default multipart threshold
RCLONE_FLAGS = ["--checksum", "--transfers", "4", "--checkers", "8"]  # rclone's defaults, written out


# -- the data ------------------------------------------------------------------------------
def object_key(case: str, i: int) -> str:
    digest = hashlib.md5(f"bench-replication-{case}-{i}".encode()).hexdigest()
    return f"{PREFIXES[case]}{digest[:2]}/{uuid.UUID(digest)}.wav"


def object_body(case: str, i: int, size: int) -> bytes:
    rng = random.Random(f"{case}-{i}")  # randbytes takes at most 256 MiB - 1 at a time
    return b"".join(rng.randbytes(min(MiB, size - at)) for at in range(0, size, MiB))


def _listing(provider: StorageProvider, prefix: str) -> dict[str, int]:
    return {info.key: info.size for info in provider.iter_objects(prefix)}


def _clear(provider: StorageProvider, prefix: str) -> int:
    keys = list(_listing(provider, prefix))
    for start in range(0, len(keys), 1000):
        batch = keys[start:start + 1000]
        provider.client.delete_objects(Bucket=provider.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                       "Quiet": True})
    left = _listing(provider, prefix)
    assert not left, f"{len(left)} objects left under {prefix} on {provider.name}"
    return len(keys)


def _upload(source: StorageProvider, case: str, n: int, size: int) -> int:
    """The source objects (``sha256`` metadata from ``StorageProvider.put``), uploaded once and
    reused while the listing matches."""
    expected = {object_key(case, i): size for i in range(n)}
    have = _listing(source, PREFIXES[case])
    todo = [i for i in range(n) if have.get(object_key(case, i)) != size]
    for key in set(have) - set(expected):
        source.delete(key)

    def put(i: int) -> None:
        source.put(object_key(case, i), object_body(case, i, size), content_type="audio/wav",
                   metadata={"original-name": f"bench-{i}.wav"})

    with ThreadPoolExecutor(max_workers=8 if size <= MiB else 2) as pool:
        list(pool.map(put, todo))
    assert _listing(source, PREFIXES[case]) == expected
    return len(todo)


def prepare_database(stack, settings: Settings, scale: dict) -> str:
    base = settings.require_database().primary_url.rsplit("/", 1)[0]
    stack.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {DATABASE} OWNER csl")
    url = f"{base}/{DATABASE}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
        user = conn.execute("INSERT INTO users (email, name, role) VALUES ('bench@example.org', 'Bench', "
                            "'cultural_contributor') RETURNING id").fetchone()[0]
        with conn.cursor() as cur, cur.copy(
                "COPY audio_samples (title, file_url, file_size, duration, format, sample_rate, cultural_origin, "
                "instrument_type, usage_rights, price_personal, price_commercial, price_enterprise, contributor_id) "
                "FROM STDIN") as copy:
            for case, (n, size) in scale.items():
                for i in range(n):
                    copy.write_row((f"bench {case} {i}", object_key(case, i), size, 1.0, "wav", 44100, "bench",
                                    "drum", "personal", 1.0, 3.0, 10.0, user))
    return url


# -- the contenders --------------------------------------------------------------------------
def _figures(m) -> dict:
    return {"wall_s": round(m.wall_s, 2), "peak_rss_mb": round(m.maxrss_kib / 1024, 1), "cpu_s": round(m.cpu_s, 1)}


def ours(env: dict[str, str], *, prefix: str, run_key: str, instrument: bool = False,
         trust_checksums: bool = False, concurrency: int = CONCURRENCY) -> dict:
    spec = {"run_key": run_key, "prefix": prefix, "instrument": instrument, "trust_checksums": trust_checksums,
            "concurrency": concurrency, "multipart_threshold_mb": THRESHOLD_MB}
    m = run_measured([sys.executable, str(CHILD), json.dumps(spec)], env)
    if m.code != 0:
        raise RuntimeError(f"replicate failed ({m.code}): {m.stderr[-3000:]}")
    return {**_figures(m), **json.loads(m.stdout)}


def rclone(primary: StorageProvider, fallback: StorageProvider, prefix: str) -> dict:
    path = prefix.rstrip("/")
    cmd = ["rclone", "copy", f"P:{primary.bucket}/{path}", f"F:{fallback.bucket}/{path}", *RCLONE_FLAGS,
           "--log-level", "INFO", "--stats", "0"]
    m = run_measured(cmd, rclone_env(primary, fallback))
    err = m.stderr
    if m.code != 0:
        raise RuntimeError(f"rclone copy failed ({m.code}): {err[-3000:]}")
    return {**_figures(m), "copied": err.count(": Copied (new)") + err.count(": Copied (replaced existing)"),
            "src_hash_empty": err.count("Src hash empty"), "errors": err.count("ERROR")}


def rclone_version() -> str:
    out = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def _median(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return {**ordered[len(ordered) // 2], "all_wall_s": [r["wall_s"] for r in runs],
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "all_cpu_s": [r["cpu_s"] for r in runs]}


def _complete(fallback: StorageProvider, source: dict[str, int], prefix: str, who: str) -> None:
    got = _listing(fallback, prefix)
    if got != source:
        raise RuntimeError(f"{who}: the destination holds {len(got)} of {len(source)} objects under {prefix} "
                           f"({sum(1 for k, s in source.items() if got.get(k) != s)} missing or wrong)")


def run_case(case: str, n: int, size: int, rounds: int, env: dict[str, str], primary: StorageProvider,
             fallback: StorageProvider) -> dict:
    prefix = PREFIXES[case]
    source = _listing(primary, prefix)
    runs: dict[str, list[dict]] = {"ours": [], "ours_noop": [], "rclone": [], "rclone_noop": []}
    for r in range(rounds):
        for contender in (("ours", "rclone") if r % 2 == 0 else ("rclone", "ours")):
            _clear(fallback, prefix)
            if contender == "ours":
                key = f"bench-{case}-{r}-{uuid.uuid4().hex[:8]}"
                copy = ours(env, prefix=prefix, run_key=key)
                _complete(fallback, source, prefix, "ours")
                noop = ours(env, prefix=prefix, run_key=f"{key}-noop")
                assert copy["verified"] == n and noop["planned"] == 0 and noop["quick_look"], (copy, noop)
            else:
                copy = rclone(primary, fallback, prefix)
                _complete(fallback, source, prefix, "rclone")
                noop = rclone(primary, fallback, prefix)
                assert noop["copied"] == 0, noop
            runs[contender].append(copy)
            runs[f"{contender}_noop"].append(noop)
            print(f"[bench] replication {case} round {r + 1}: {contender} {copy['wall_s']} s "
                  f"({copy['peak_rss_mb']} MB), no-op {noop['wall_s']} s", flush=True)
    result: dict = {"objects": n, "object_bytes": size, "total_bytes": n * size, "rounds": rounds}
    for name, measured in runs.items():
        result[name] = _median(measured)
    for name in ("ours", "rclone"):
        result[name]["bytes_per_s"] = round(n * size / result[name]["wall_s"])
    # where our time goes: one instrumented run and its no-op rerun, then the copy with the
    # destination's stored checksums trusted
    _clear(fallback, prefix)
    key = f"bench-{case}-profile-{uuid.uuid4().hex[:8]}"
    result["ours_profile"] = ours(env, prefix=prefix, run_key=key, instrument=True)
    result["ours_noop_profile"] = ours(env, prefix=prefix, run_key=f"{key}-noop", instrument=True)
    _clear(fallback, prefix)
    result["ours_what_if_checksum_verification"] = ours(
        env, prefix=prefix, run_key=f"bench-{case}-whatif-{uuid.uuid4().hex[:8]}", instrument=True,
        trust_checksums=True)
    if case == "many":  # was our concurrency a fair choice? one run each at half and double
        for concurrency in (CONCURRENCY // 2, CONCURRENCY * 2):
            _clear(fallback, prefix)
            got = ours(env, prefix=prefix, run_key=f"bench-{case}-c{concurrency}-{uuid.uuid4().hex[:8]}",
                       concurrency=concurrency)
            result[f"ours_concurrency_{concurrency}"] = {k: got[k] for k in ("wall_s", "peak_rss_mb", "cpu_s",
                                                                            "phases_s")}
    _clear(fallback, prefix)
    return result


def floor(env: dict[str, str], rounds: int) -> dict:
    """What any run of ours pays before its first request, measured as ours is (a subprocess,
    same environment): the interpreter, the interpreter importing psycopg, and importing what a
    replication run imports. Medians of ``rounds``."""
    probes = {"python_s": "pass", "python_import_psycopg_s": "import psycopg",
              "python_import_replication_s": "import csl.config, csl.storage.transfer, csl.storage.replication"}
    out = {}
    for name, code in probes.items():
        walls = sorted(run_measured([sys.executable, "-c", code], env).wall_s for _ in range(max(3, rounds)))
        out[name] = round(walls[len(walls) // 2], 3)
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


def run(stack, **_: object) -> dict:
    if shutil.which("rclone") is None:
        raise RuntimeError("rclone is not installed: make sysdeps installs it (Debian package rclone)")
    scale_name = os.environ.get("CSL_BENCH_SCALE", "full")
    if scale_name not in SCALES:
        raise RuntimeError(f"CSL_BENCH_SCALE must be one of {', '.join(SCALES)}, got {scale_name!r}")
    scale = SCALES[scale_name]
    rounds = int(os.environ.get("CSL_BENCH_ROUNDS", ROUNDS))
    stack_env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=stack_env)
    settings = Settings.from_env(stack_env)
    primary = StorageProvider(replace(settings.provider("primary"), bucket=BUCKET))
    fallback = StorageProvider(replace(settings.provider("fallback"), bucket=BUCKET))
    result: dict = {"scale": scale_name, "rclone_version": rclone_version(),
                    "ours_options": {"mode": "diff", "concurrency": CONCURRENCY, "multipart_threshold_mb": THRESHOLD_MB,
                                     "source": "primary", "destination": "fallback"},
                    "rclone_flags": ["copy", *RCLONE_FLAGS], "cases": {}}
    started = time.perf_counter()
    try:
        primary.ensure_bucket()
        fallback.ensure_bucket()
        for case in scale:
            _clear(fallback, PREFIXES[case])
        # the package as installed: bytecode compiled once (pip does it on install), not on every
        # run of ours (the environment may forbid writing it: PYTHONDONTWRITEBYTECODE)
        compileall.compile_dir(REPO / "include", quiet=1)
        url = prepare_database(stack, settings, scale)
        uploaded = {case: _upload(primary, case, n, size) for case, (n, size) in scale.items()}
        result["prepare"] = {"uploaded": uploaded, "prepare_s": round(time.perf_counter() - started, 1)}
        env = {**os.environ, **stack_env, **database_env(stack_env, url), "MINIO_BUCKET": BUCKET, "S3_BUCKET": BUCKET,
               "CSL_ENV_FILE": os.devnull,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")]))}
        result["floor"] = floor(env, rounds)
        for case, (n, size) in scale.items():
            result["cases"][case] = run_case(case, n, size, rounds, env, primary, fallback)
    finally:
        cleanup(stack, primary, fallback, scale)
    many, big = result["cases"]["many"], result["cases"]["big"]
    result["summary"] = {
        "scale": scale_name,
        "many_ours_s": many["ours"]["wall_s"], "many_rclone_s": many["rclone"]["wall_s"],
        "many_time_ratio": _ratio(many["ours"]["wall_s"], many["rclone"]["wall_s"]),
        "many_noop_time_ratio": _ratio(many["ours_noop"]["wall_s"], many["rclone_noop"]["wall_s"]),
        "big_ours_s": big["ours"]["wall_s"], "big_rclone_s": big["rclone"]["wall_s"],
        "big_time_ratio": _ratio(big["ours"]["wall_s"], big["rclone"]["wall_s"]),
        "big_noop_time_ratio": _ratio(big["ours_noop"]["wall_s"], big["rclone_noop"]["wall_s"]),
        # a Python process that imports psycopg, and nothing else, against rclone's whole no-op
        "big_noop_floor_ratio": _ratio(result["floor"]["python_import_psycopg_s"], big["rclone_noop"]["wall_s"]),
        "peak_rss_mb": {f"{case}_{who}": result["cases"][case][who]["max_peak_rss_mb"]
                        for case in ("many", "big") for who in ("ours", "rclone", "ours_noop", "rclone_noop")},
        "cpu_s": {f"{case}_{who}": result["cases"][case][who]["cpu_s"]
                  for case in ("many", "big") for who in ("ours", "rclone", "ours_noop", "rclone_noop")},
        "ours_by_verification": {case: result["cases"][case]["ours"]["by_verification"] for case in ("many", "big")},
    }
    return result


def cleanup(stack, primary: StorageProvider, fallback: StorageProvider, scale: dict) -> None:
    """The benchmark's objects, buckets and database go: the bench stack must not fill the disk."""
    for provider in (primary, fallback):
        for case in scale:
            _clear(provider, PREFIXES[case])
        uploads = provider.client.list_multipart_uploads(Bucket=provider.bucket).get("Uploads", [])
        for upload in uploads:
            provider.client.abort_multipart_upload(Bucket=provider.bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
        provider.client.delete_bucket(Bucket=provider.bucket)
    stack.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
