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
        "tolerate": [["database.everything"], "edge", ["edge", "edge"], ["edge\n"]],
    },
    "csl_index_install": {
        "dry_run": ["yes", 1],
        "only": [["Bad Name"], "idx_users_email_active", ["idx_a", "idx_a"], ["idx_a\n"], ["i" * 64]],
        "lock_timeout_ms": [0, 5, "fast", 10**7],
        "statement_timeout_s": [0, 1.5],
        "max_lock_retries": [-1, 21],
    },
    "csl_db_maintenance": {
        "dry_run": ["no"],
        "tables": [["users; DROP TABLE users"], "users", [1], ["users\n"], ["public.users\n"], ["t" * 64]],
        "mode": ["full", ""],
        "max_tables": [0, 10**6, "all"],
        "dead_ratio": [0, 1.5, -0.1],
        "max_duration_s": [0, 10**6],
    },
    "csl_revenue_settlement": {
        "contributor_share_bps": [-1, 10001, 70.5, "70%"],
        "minimum_payout_cents": [-1, "ten dollars", 10**9],
        # dates that do not exist, one-digit fields, words, an empty string, a trailing newline, a
        # 25th hour, a one-digit offset, year 0, a number, non-ASCII digits
        "period_start": ["yesterday", "2026-13", "2026-02-30", "2026-1-5", "2026-13-01", "2023-02-29", "1900-02-29",
                         "2026-04-31", "", "2026-11-01\n", "2026-11-01T25:00:00Z", "2026-11-01T10:00:00+1:00",
                         "0000-01-01", 20261101, "\u0662\u0660\u0662\u0666-11-01"],
        "period_end": ["2026-02-30", "tomorrow", "2026-11-01T00:00:00Z\n"],
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
        "temp_prefix": ["tmp", "_quarantine/", "", "samples/", "/", "../", "tmp/x/"],  # an allow-list
        "max_share": [0, 1.5, "10%"],
        "temp_ttl_h": [-1, "a day"],
        "orphan_grace_h": [-5],
        "max_objects": [-1, 10**7],
        "purge_quarantine": ["yes"],
        "quarantine_retention_days": [0],
    },
    "csl_storage_replication": {
        "mode": ["all", "Queue", 1, None],
        "prefix": ["samples/*", "a\nb"],
        "source": ["Primary!", ""],
        "destination": ["../x"],
        "max_objects": [0, 10**8, "many"],
        "max_bytes": [0, -1, "1GB"],
        "concurrency": [0, 65, 1.5],
        "multipart_threshold_mb": [4, 5121],
        "shards": [0, 65],
        "dry_run": ["maybe", None],
        "providers": [["Primary!"], ["primary", "primary"]],
    },
    "csl_storage_publication": {
        "dry_run": ["maybe", None],
        "max_withdrawals": [-1, 10**7, "all"],
        "max_share": [0, 1.5, "10%"],
    },
    "csl_cdn_purge": {
        "urls": ["https://cdn.example.com/a.mp3", ["cdn.example.com/a.mp3"], ["https://cdn.example.com/a b.mp3"],
                 ["ftp://cdn.example.com/a"], ["https://x/a", "https://x/a"], ["https://x/a\n"], [1]],
        "tags": ["sample:1", ["two words"], [""], ["t" * 1025], ["caf\u00e9"], ["a", "a"]],
        "prefixes": [["/audio/"], "https://cdn.example.com/"],
        "zone": ["video", "Audio", "audio\n", 1],
        "provider": ["akamai", "", "varnish\n"],
        "dry_run": ["maybe", None],
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
        "unused_index_days": [0, -1, "a week", 4000],
        "advisor_role": ["", "csl advisor", 'x"; DROP TABLE users; --', "a" * 64],
        "report_retention_days": [0, 3651, 1.5],
    },
}
GOOD_PARAMS = {
    "csl_revenue_settlement": {"contributor_share_bps": [0, 7000, 10000],
                               "period_start": [None, "2026-11-01", "2024-02-29", "2000-02-29", "2026-12-31",
                                                "2026-11-01T00:00:00+01:00", "2026-11-01T23:59:59.5Z",
                                                "2026-11-01 08:00-05:00", "2026-11-01T10:00:00"],
                               "period_end": [None, "2027-01-01", "2026-11-30T00:00:00Z"],
                               "minimum_payout_cents": [0, 1000]},
    "csl_db_maintenance": {"tables": [[], None, ["users", "csl_ops.task_runs"]], "mode": ["auto", "freeze"],
                           "dead_ratio": [0.05, 1], "max_tables": [1]},
    "csl_platform_health": {"max_replica_lag_s": [0, 2.5], "tolerate": [[], None, ["database.replica", "edge"]]},
    "csl_index_install": {"dry_run": [True, False], "only": [[], None, ["idx_users_email_active"]],
                          "lock_timeout_ms": [10, 2000], "max_lock_retries": [0, 20]},
    "csl_storage_integrity": {"shards": [1, 16], "deep_sample": [0, 0.25, 1], "prefix": [None, "", "samples/0a/"],
                              "key_order": ["path", "byte"], "providers": [None, [], ["fallback", "primary"]]},
    "csl_storage_cleanup": {"dry_run": [True, False, None], "temp_prefix": ["tmp/", "uploads/tmp/"],
                            "max_objects": [0, 500], "orphan_grace_h": [0, 72], "max_share": [0.1, 1],
                            "providers": [None, [], ["primary"]]},
    "csl_storage_publication": {"dry_run": [True, False], "max_withdrawals": [0, 1000], "max_share": [0.1, 1]},
    "csl_storage_replication": {"mode": ["auto", "queue", "findings", "diff"], "prefix": [None, "", "samples/0a/"],
                                "source": [None, "primary"], "destination": [None, "fallback"],
                                "max_objects": [1, 10_000_000], "max_bytes": [1, 1 << 50], "concurrency": [1, 64],
                                "multipart_threshold_mb": [5, 5120], "shards": [1, 64], "dry_run": [True, False],
                                "providers": [None, [], ["primary", "fallback"]]},
    "csl_cdn_purge": {"urls": [[], ["https://cdn.example.com/audio/samples/a.mp3?v=2"]],
                      "tags": [[], ["obj:/cultural-audio-published/samples/a.mp3", "sample:42"]],
                      "prefixes": [[], ["https://cdn.example.com/images/covers/"]],
                      "zone": [None, "audio", "images", "static"], "provider": [None, "cloudflare", "varnish"],
                      "dry_run": [True, False]},
    "csl_performance_report": {"make_report": ["auto", "always", "never"], "report_hour_utc": [0, 23],
                               "window_hours": [0.5, 24, 168], "regression_pct": [25, 200], "advise_queries": [0, 10],
                               "retention_days": [1, 30], "exact_bloat_tables": [[], None, ["public.licenses"]],
                               "unused_index_days": [0.5, 7, 30], "advisor_role": ["csl_advisor"],
                               "report_retention_days": [1, 90]},
}


# Given to every task's pre_execute as the run's conf: the typo the issue found, then nothing at all.
CONF_CASES = [{"dryrun": True}, {}]


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
                             json.dumps(cases), json.dumps(CONF_CASES)], capture_output=True, text=True, env=env,
                            timeout=300, check=False)
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


def test_a_form_field_a_person_empties_is_accepted(inspected):
    # The trigger form sends an emptied text or list field as null: a Param whose default is "nothing"
    # ("" / [] / null) must accept null, or the form refuses to trigger with that field cleared. And no
    # "" default: an empty string is not a value a person chose.
    for dag_id, dag in inspected["dags"].items():
        for name, param in dag["params"].items():
            if param["default"] in ("", [], None):
                assert param["accepts_null"], f"{dag_id}.{name}: default {param['default']!r} but null refused"
            assert param["default"] != "", f"{dag_id}.{name}: an empty-string default; use null"


def test_every_number_param_is_bounded(inspected):
    for dag_id, dag in inspected["dags"].items():
        for name, param in dag["params"].items():
            schema = param["schema"]
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if {"integer", "number"} & set(types) and "enum" not in schema:
                assert {"minimum", "exclusiveMinimum"} & set(schema), f"{dag_id}.{name} has no lower bound"
                assert {"maximum", "exclusiveMaximum"} & set(schema), f"{dag_id}.{name} has no upper bound"


def test_every_task_refuses_an_undeclared_conf_key_before_it_starts(inspected):
    for dag_id, dag in inspected["dags"].items():
        for task_id, task in dag["task_checks"].items():
            assert task["csl_operator"], f"{dag_id}.{task_id} is not a CslBaseOperator: nothing checks its conf"
            if not task["conf"]:
                continue  # a mapped task: its class is checked above, its instances run the same pre_execute
            typo, nothing = task["conf"]
            assert typo["refused"] and typo["fail"], (dag_id, task_id, typo)  # AirflowFailException: no retry
            assert "'dryrun'" in typo["message"] and dag_id in typo["message"], typo
            assert f"declared: {', '.join(sorted(dag['params']))}" in typo["message"], typo
            if "dry_run" in dag["params"]:
                assert "did you mean 'dry_run'?" in typo["message"], typo
            assert nothing == {"refused": False}, (dag_id, task_id, nothing)


def test_params_reach_operators_as_their_values(inspected):
    # ``param(name)`` gives the operator the run's validated value; a "{{ params.x }}" string would be
    # rendered to text and parsed back (a list as JSON text, a null as "None").
    used = set()
    for dag_id, dag in inspected["dags"].items():
        for task_id, task in dag["task_checks"].items():
            assert not task["param_texts"], f"{dag_id}.{task_id} reads a Param as template text: {task['param_texts']}"
            unknown = set(task["param_refs"]) - set(dag["params"])
            assert not unknown, f"{dag_id}.{task_id} takes Params its DAG does not declare: {sorted(unknown)}"
            used.update((dag_id, name) for name in task["param_refs"])
    assert ("csl_platform_health", "tolerate") in used and ("csl_db_maintenance", "tables") in used


def test_every_task_reports_its_failure_through_the_one_shared_callback(inspected):
    for dag_id, dag in inspected["dags"].items():
        for task_id, task in dag["task_checks"].items():
            assert task["failure_callback"] == "on_task_failure", (dag_id, task_id, task["failure_callback"])


def test_the_health_form_offers_exactly_the_components_the_check_knows(inspected):
    from csl.health import COMPONENTS

    schema = inspected["dags"]["csl_platform_health"]["params"]["tolerate"]["schema"]
    assert schema["items"]["enum"] == list(COMPONENTS)


def test_every_period_bound_the_form_accepts_is_one_the_settlement_parses(inspected):
    # The DAG's pattern and csl.settlement.parse_period must agree: a value the trigger form lets
    # through and the domain refuses would fail the run after the trigger said yes.
    from csl.settlement import parse_period

    outcomes = inspected["dags"]["csl_revenue_settlement"]["refused"]
    for name in ("period_start", "period_end"):
        accepted = [o["value"] for o in outcomes[name] if not o["refused"] and o["value"] is not None]
        assert accepted, name
        for value in accepted:
            assert parse_period(value, name).tzinfo is not None, value


def test_settlement_dag_shape(inspected):
    dag = inspected["dags"]["csl_revenue_settlement"]
    assert dag["tasks"] == ["send_payouts", "settle", "statement"]
    assert dag["max_active_runs"] == 1


def test_publication_dag_shape(inspected):
    dag = inspected["dags"]["csl_storage_publication"]
    assert dag["tasks"] == ["publish"]
    assert dag["max_active_runs"] == 1


def test_maintenance_dag_shape(inspected):
    dag = inspected["dags"]["csl_db_maintenance"]
    assert dag["tasks"] == ["act", "plan", "report"]
    assert dag["max_active_runs"] == 1


def test_index_dag_shape(inspected):
    dag = inspected["dags"]["csl_index_install"]
    assert dag["tasks"] == ["build", "plan", "report"]
    assert dag["max_active_runs"] == 1


def test_cdn_purge_dag_shape(inspected):
    dag = inspected["dags"]["csl_cdn_purge"]
    assert dag["tasks"] == ["await_completion", "plan", "report", "send"]
    assert dag["max_active_runs"] == 1


def test_health_dag_shape(inspected):
    dag = inspected["dags"]["csl_platform_health"]
    assert dag["tasks"] == ["check_database", "check_edge", "check_storage", "summary"]
    assert dag["max_active_runs"] == 1
