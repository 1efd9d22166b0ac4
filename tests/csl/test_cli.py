"""``python -m csl``: each action of a command is its own subcommand with only its own options
(issue 13), and a misplaced option is one line, exit 2, before anything runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..conftest import REPO

OWN = {  # options only this action has, among its command's actions
    ("indexes", "plan"): set(),
    ("indexes", "apply"): {"--dry-run", "--lock-timeout-ms", "--statement-timeout-s", "--max-lock-retries"},
    ("maintenance", "plan"): set(),
    ("maintenance", "run"): {"--max-duration-s", "--workers", "--dry-run"},
    ("settlement", "run"): {"--contributor-share-bps", "--minimum-payout-cents", "--period-start", "--period-end",
                            "--run-key", "--dry-run"},
    ("settlement", "statement"): {"--contributor", "--out"},
    ("settlement", "send-payouts"): set(),
    ("settlement", "review-payout"): {"--payout", "--transfer", "--not-paid"},
}


def csl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "CSL_ENV_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "csl", *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.mark.parametrize(("command", "action"), sorted(OWN))
def test_each_action_offers_its_own_options_and_not_its_siblings(command, action):
    shown = csl(command, action, "--help")
    assert shown.returncode == 0 and f"usage: csl {command} {action}" in shown.stdout, shown.stderr
    offered = set(re.findall(r"--[a-z][a-z-]*", shown.stdout))
    siblings = set().union(*(opts for (cmd, act), opts in OWN.items() if cmd == command and act != action))
    assert OWN[(command, action)] <= offered and not (siblings - OWN[(command, action)]) & offered, sorted(offered)


@pytest.mark.parametrize(("args", "named"), [
    (("indexes", "plan", "--lock-timeout-ms", "5"), "--lock-timeout-ms"),
    (("maintenance", "plan", "--workers", "2"), "--workers"),
    (("settlement", "statement", "--dry-run"), "--dry-run"),
    (("settlement", "review-payout", "--payout", "1"), "--transfer --not-paid"),
    (("settlement", "review-payout", "--payout", "1", "--transfer", "tr_1", "--not-paid", "x"), "not allowed"),
    (("settlement",), "required"),
])
def test_a_misplaced_option_is_one_line_and_exit_2(args, named):
    refused = csl(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and named in refused.stderr, refused.stderr
