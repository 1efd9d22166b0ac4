"""``python -m csl storage``: each action is its own subcommand and offers only its own options."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ...conftest import REPO

OWN = {  # options only that action has
    "sweep": {"--deep-sample", "--shards", "--workers", "--depth", "--key-order"},
    "cleanup": {"--temp-prefix", "--temp-ttl-h", "--orphan-grace-h", "--purge-quarantine",
                "--quarantine-retention-days"},
    "restore": {"--key", "--force"},
    "publish": {"--max-withdrawals"},
    "replicate": {"--mode", "--source", "--destination", "--max-bytes", "--concurrency", "--multipart-threshold-mb",
                  "--dry-run"},
}
SHARED = {"--prefix": {"sweep", "replicate"}, "--max-objects": {"cleanup", "replicate"}}  # and only they


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
    assert {option for option, actions in SHARED.items() if action in actions} == set(SHARED) & offered



@pytest.mark.parametrize(("args", "named"), [
    (("sweep", "--temp-prefix", "tmp/"), "--temp-prefix"),  # cleanup's option
    (("cleanup", "--key", "samples/x.wav"), "--key"),  # restore's option
    (("restore",), "--key --run-key"),  # one of them is needed
    (("restore", "--key", "a", "--run-key", "b"), "not allowed with argument"),
    (("publish", "--max-share", "0"), "--max-share"),
    (("replicate", "--mode", "everything"), "--mode"),
    (("replicate", "--concurrency", "0"), "--concurrency"),
    (("replicate", "--multipart-threshold-mb", "4"), "--multipart-threshold-mb"),
    (("replicate", "--apply"), "--apply"),  # publish's and cleanup's, not replicate's: it has --dry-run
])
def test_an_option_of_another_action_or_a_bad_value_is_one_line_and_exit_2(args, named):
    refused = csl(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and named in refused.stderr, refused.stderr
