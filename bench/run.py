#!/usr/bin/env python3
"""``make bench``: every benchmark, each compared with its anchor in the same run.

Results go to ``bench/results/<name>.json`` (ratios and raw figures). Uses its own stack
under ``.local/bench-stack`` (left running for reruns; ``--down`` stops it at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in ("include", "scripts", "bench"):
    sys.path.insert(0, str(REPO / folder))

from devstack import Stack

BENCHMARKS = ("seed", "indexes", "maintenance", "settlement", "storage", "replication", "reports", "cdn", "scale_out")


def machine() -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "when": datetime.now(UTC).isoformat(timespec="seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--state", type=Path, default=REPO / ".local" / "bench-stack")
    parser.add_argument("--no-objects", action="store_true", help="seed: skip the 100k-object upload")
    parser.add_argument("--down", action="store_true", help="stop the bench stack afterwards")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    args.names = args.names or list(BENCHMARKS)
    stack = Stack(args.state, args.state / ".env")
    stack.up(airflow=False)
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.names:
            module = __import__(f"bench_{name}")
            started = time.perf_counter()
            result = module.run(stack, objects=not args.no_objects)
            result.update(benchmark=name, machine=machine(), wall_s=round(time.perf_counter() - started, 1))
            path = results_dir / f"{name}.json"
            path.write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"[bench] {name}: {json.dumps(result.get('summary', {}), default=str)}")
            print(f"[bench] written {path.relative_to(REPO)}")
    finally:
        if args.down:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
