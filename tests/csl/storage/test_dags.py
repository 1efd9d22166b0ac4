"""The storage DAGs' trigger forms (their Params), parsed by the real Airflow in a subprocess:
optional fields accept null (what the UI sends for an emptied field), the cleanup's temporary
folder is the allow-list of ``csl.storage.cleanup``, and a manual cleanup defaults to a dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from csl.storage import cleanup

from ...conftest import REPO

CASES = {
    "csl_storage_integrity": {"prefix": [None, "", "samples/0a/", "samples/*"], "providers": [None, [], ["fallback"]]},
    "csl_storage_cleanup": {"dry_run": [None, True, False, "maybe"], "max_share": [0.1, 1, 0, 1.5],
                            "temp_prefix": ["tmp/", "uploads/tmp/", "samples/", "/", "../", "", "tmp/x/"],
                            "providers": [None, [], ["primary"]]},
}


@pytest.fixture(scope="module")
def dags(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow_home")), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "True", "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("include", "plugins", "dags"))})
    result = subprocess.run([sys.executable, str(REPO / "tests" / "dags" / "inspect_dags.py"), str(REPO / "dags"),
                             json.dumps(CASES)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["dags"]


def _accepted(dags, dag_id: str, name: str) -> list[bool]:
    return [not o["refused"] for o in dags[dag_id]["refused"][name]]


def test_the_sweep_form_accepts_an_emptied_prefix_and_no_longer_calls_the_first_provider_the_reference(dags):
    assert _accepted(dags, "csl_storage_integrity", "prefix") == [True, True, True, False]
    assert _accepted(dags, "csl_storage_integrity", "providers") == [True, True, True]
    params = dags["csl_storage_integrity"]["params"]
    assert params["prefix"]["default"] is None
    assert "first" not in params["providers"]["description"] and "primary" in params["providers"]["description"]


def test_the_cleanup_form_defaults_to_automatic_dry_runs_and_offers_only_temporary_folders(dags):
    params = dags["csl_storage_cleanup"]["params"]
    assert params["dry_run"]["default"] is None and "dry run when triggered by hand" in params["dry_run"]["description"]
    assert _accepted(dags, "csl_storage_cleanup", "dry_run") == [True, True, True, False]
    assert params["temp_prefix"]["schema"]["enum"] == list(cleanup.TEMP_PREFIXES)
    assert params["temp_prefix"]["default"] in cleanup.TEMP_PREFIXES
    assert _accepted(dags, "csl_storage_cleanup", "temp_prefix") == [True, True, False, False, False, False, False]
    assert _accepted(dags, "csl_storage_cleanup", "max_share") == [True, True, False, False]
    assert params["max_share"]["default"] == cleanup.DEFAULT_MAX_SHARE
    for prefix in cleanup.TEMP_PREFIXES:  # what the form offers, the domain accepts
        assert cleanup.check_temp_prefix(prefix) == prefix
