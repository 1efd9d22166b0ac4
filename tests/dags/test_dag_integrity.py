"""Every DAG file: imports cleanly, parses fast with no heavy imports, documents itself,
and refuses bad Params before any work starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILES = sorted(p.name for p in DAGS.glob("*.py"))

# Bad values each DAG must refuse, by param.
BAD_PARAMS = {
    "csl_platform_health": {
        "max_replica_lag_s": [-1, "thirty", 100000],
        "tolerate": [["database.everything"], "edge", ["edge", "edge"]],
    },
    "csl_index_install": {
        "dry_run": ["yes", 1],
        "only": [["Bad Name"], "idx_users_email_active", ["idx_a", "idx_a"]],
        "lock_timeout_ms": [0, 5, "fast", 10**7],
        "statement_timeout_s": [0, 1.5],
        "max_lock_retries": [-1, 21],
    },
    "csl_db_maintenance": {
        "dry_run": ["no"],
        "tables": [["users; DROP TABLE users"], "users", [1]],
        "mode": ["full", ""],
        "max_tables": [0, 10**6, "all"],
        "dead_ratio": [0, 1.5, -0.1],
        "max_duration_s": [0, 10**6],
    },
    "csl_revenue_settlement": {
        "contributor_share_bps": [-1, 10001, 70.5, "70%"],
        "minimum_payout_cents": [-1, "ten dollars"],
        "period_start": ["yesterday", "2026-13"],
        "dry_run": ["sure"],
        "send_payouts": ["yes"],
    },
    "csl_storage_integrity": {
        "shards": [0, 257, "many"],
        "deep_sample": [-0.1, 1.5, "1%"],
        "prefix": ["samples/*"],
        "key_order": ["random"],
        "depth": [0, 9],
        "providers": ["primary", ["Primary!"], ["primary", "primary"]],
    },
    "csl_storage_cleanup": {
        "dry_run": ["maybe"],
        "temp_prefix": ["tmp", "_quarantine/", ""],
        "temp_ttl_h": [-1, "a day"],
        "orphan_grace_h": [-5],
        "max_objects": [-1, 10**7],
        "purge_quarantine": ["yes"],
        "quarantine_retention_days": [0],
    },
    "csl_performance_report": {
        "make_report": ["sometimes", ""],
        "report_hour_utc": [-1, 24, "5am"],
        "window_hours": [0, -24, 10_000, "24h"],
        "top": [0, 1.5],
        "regression_pct": [0, "half"],
        "min_calls": [0, "many"],
        "min_cost_drop_pct": [0, 101],
        "advise_queries": [-1, 101],
        "exact_bloat_tables": [["licenses"], "public.licenses", ["public.licenses; drop"]],
        "retention_days": [0, 3651],
    },
}
GOOD_PARAMS = {
    "csl_revenue_settlement": {"contributor_share_bps": [0, 7000, 10000], "period_start": ["", "2026-11-01"],
                               "minimum_payout_cents": [0, 1000]},
    "csl_db_maintenance": {"tables": [[], ["users", "csl_ops.task_runs"]], "mode": ["auto", "freeze"],
                           "dead_ratio": [0.05, 1], "max_tables": [1]},
    "csl_platform_health": {"max_replica_lag_s": [0, 2.5], "tolerate": [[], ["database.replica", "edge"]]},
    "csl_index_install": {"dry_run": [True, False], "only": [[], ["idx_users_email_active"]],
                          "lock_timeout_ms": [10, 2000], "max_lock_retries": [0, 20]},
    "csl_storage_integrity": {"shards": [1, 16], "deep_sample": [0, 0.25, 1], "prefix": ["", "samples/0a/"],
                              "key_order": ["path", "byte"], "providers": [[], ["primary", "fallback"]]},
    "csl_storage_cleanup": {"dry_run": [True], "temp_prefix": ["tmp/", "uploads/tmp/"], "max_objects": [0, 500],
                            "orphan_grace_h": [0, 72]},
    "csl_performance_report": {"make_report": ["auto", "always", "never"], "report_hour_utc": [0, 23],
                               "window_hours": [0.5, 24, 168], "regression_pct": [25, 200], "advise_queries": [0, 10],
                               "retention_days": [1, 30], "exact_bloat_tables": [[], ["public.licenses"]]},
}


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("include", "plugins", "dags")),
    })
    cases = {dag: {name: BAD_PARAMS.get(dag, {}).get(name, []) + GOOD_PARAMS.get(dag, {}).get(name, [])
                   for name in set(BAD_PARAMS.get(dag, {})) | set(GOOD_PARAMS.get(dag, {}))}
             for dag in set(BAD_PARAMS) | set(GOOD_PARAMS)}
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("inspect_dags.py")), str(DAGS),
                             json.dumps(cases)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_there_are_dag_files():
    assert "csl_platform_health.py" in DAG_FILES


def test_no_import_errors(inspected):
    assert inspected["import_errors"] == {}


@pytest.mark.parametrize("filename", DAG_FILES)
def test_dag_file_parses_fast(inspected, filename):
    # best of three executions, after airflow.sdk and the shared glue are imported once
    assert inspected["files"][filename]["parse_s"] < 0.3


def test_no_heavy_imports_at_parse_time(inspected):
    assert inspected["heavy_modules"] == [], "import pandas/boto3/psycopg/… inside tasks, not at top level"


def test_every_dag_has_owner_tags_doc_and_described_params(inspected):
    assert inspected["dags"], "no DAG was loaded"
    for dag_id, dag in inspected["dags"].items():
        assert dag_id.startswith("csl_") and dag["fileloc"] == f"{dag_id}.py"
        assert dag["owners"] and "airflow" not in dag["owners"], dag_id
        assert "csl" in dag["tags"], dag_id
        assert dag["doc_md"], f"{dag_id} has no doc_md"
        assert dag["catchup"] is False
        for name, param in dag["params"].items():
            assert param["description"], f"{dag_id}.{name} has no description for the trigger form"
            assert "type" in param["schema"], f"{dag_id}.{name} has no JSON-schema type"


@pytest.mark.parametrize("dag_id", sorted(BAD_PARAMS))
def test_bad_params_are_refused_good_ones_accepted(inspected, dag_id):
    refused = inspected["dags"][dag_id]["refused"]
    for name, bad_values in BAD_PARAMS[dag_id].items():
        outcomes = refused[name][: len(bad_values)]
        assert [o["refused"] for o in outcomes] == [True] * len(bad_values), outcomes
        assert all(o["message"] for o in outcomes)
    for name, good_values in GOOD_PARAMS[dag_id].items():
        outcomes = refused[name][len(BAD_PARAMS[dag_id].get(name, [])):]
        assert [o["refused"] for o in outcomes] == [False] * len(good_values), outcomes


def test_settlement_dag_shape(inspected):
    dag = inspected["dags"]["csl_revenue_settlement"]
    assert dag["tasks"] == ["send_payouts", "settle", "statement"]
    assert dag["max_active_runs"] == 1


def test_maintenance_dag_shape(inspected):
    dag = inspected["dags"]["csl_db_maintenance"]
    assert dag["tasks"] == ["act", "plan", "report"]
    assert dag["max_active_runs"] == 1


def test_index_dag_shape(inspected):
    dag = inspected["dags"]["csl_index_install"]
    assert dag["tasks"] == ["build", "plan", "report"]
    assert dag["max_active_runs"] == 1


def test_health_dag_shape(inspected):
    dag = inspected["dags"]["csl_platform_health"]
    assert dag["tasks"] == ["check_database", "check_edge", "check_storage", "summary"]
    assert dag["max_active_runs"] == 1
