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


def test_a_command_imports_only_its_own_group():
    """``python -m csl storage replicate`` pays for no other package's import (reports and cdn pull in
    psycopg, httpx, pandas helpers: ~0.2 s on each run); help and unknown commands list every group."""
    probe = ("import sys\n"
             "from csl.cli import main\n"
             "try:\n"
             "    main(sys.argv[1:])\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(sorted(m for m in ('csl.reports', 'csl.cdn', 'csl.settlement') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "CSL_ENV_FILE": os.devnull}

    def loaded(*argv: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        return done.stdout.strip().splitlines()[-1], done.stdout + done.stderr

    assert loaded("storage", "replicate", "--help")[0] == "[]"
    assert loaded("cdn", "--help")[0] == "['csl.cdn']"
    everything, text = loaded("--help")
    assert everything == "['csl.cdn', 'csl.reports', 'csl.settlement']"
    assert all(name in text for name in ("settlement", "storage", "snapshot", "report", "cdn"))
    _, text = loaded("bogus")
    assert "invalid choice: 'bogus'" in text and "'cdn'" in text
