"""``python -m csl storage``: each action is its own subcommand and offers only its own options."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ...conftest import REPO

OWN = {  # options only that action has
    "sweep": {"--prefix", "--deep-sample", "--shards", "--workers", "--depth", "--key-order"},
    "cleanup": {"--temp-prefix", "--temp-ttl-h", "--orphan-grace-h", "--max-objects", "--purge-quarantine",
                "--quarantine-retention-days"},
    "restore": {"--key", "--force"},
    "publish": {"--max-withdrawals"},
}


def csl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "CSL_ENV_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "csl", "storage", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


@pytest.mark.parametrize("action", sorted(OWN))
def test_each_action_offers_its_own_options_and_no_other(action):
    shown = csl(action, "--help")
    assert shown.returncode == 0, shown.stderr
    assert f"usage: csl storage {action}" in shown.stdout
    offered = set(re.findall(r"--[a-z][a-z-]*", shown.stdout))
    others = set().union(*(opts for name, opts in OWN.items() if name != action))
    assert OWN[action] <= offered and not others & offered, sorted(offered)


@pytest.mark.parametrize(("args", "named"), [
    (("sweep", "--temp-prefix", "tmp/"), "--temp-prefix"),  # cleanup's option
    (("cleanup", "--key", "samples/x.wav"), "--key"),  # restore's option
    (("restore",), "--key --run-key"),  # one of them is needed
    (("restore", "--key", "a", "--run-key", "b"), "not allowed with argument"),
    (("publish", "--max-share", "0"), "--max-share"),
])
def test_an_option_of_another_action_or_a_bad_value_is_one_line_and_exit_2(args, named):
    refused = csl(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and named in refused.stderr, refused.stderr
