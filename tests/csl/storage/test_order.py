"""The storage, integrity and cleanup tests own their objects: run in the reverse of the usual
order, on the same stack, they pass (issue 13: objects one file left behind became orphans that
made the cleanup's cap refuse, so the files passed only in the README's order)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REVERSED = ["test_providers.py", "test_integrity.py", "test_cleanup.py"]  # collected in the opposite order


@pytest.mark.timeout(1200)
def test_the_storage_integrity_and_cleanup_files_pass_in_reverse_order(stack):
    env = {**os.environ, "CSL_TEST_STACK_STATE": str(stack.state)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *[str(HERE / name) for name in REVERSED]],
                          capture_output=True, text=True, env=env, cwd=HERE.parents[2], timeout=1150, check=False)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-500:]
