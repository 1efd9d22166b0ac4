"""csl.health and the CLI: one report, every component named when it is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from csl.health import platform_health

from ..conftest import REPO


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "csl", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO, check=False)


def cli_env(stack_env, **changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "STORAGE_", "MINIO_", "S3_", "CDN_"))}
    env.update(stack_env)
    env["CSL_ENV_FILE"] = os.devnull
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def test_everything_healthy(settings):
    report = platform_health(settings)
    assert report.ok is True and report.down == []
    assert report.database["replica"]["lag_s"] is not None
    assert set(report.storage) == {"primary", "fallback"}
    assert report.edge["backend_healthy"] is True
    assert set(report.edge["zones"]) == {"audio", "images", "static"}
    for name, zone in report.edge["zones"].items():
        assert zone["ok"] is True and zone["base_url"] == f"{settings.edge.base_url}/{name}"
        assert zone["latency_ms"] >= 0 and "hit_ratio" in zone


def test_edge_down_is_named_zone_by_zone(settings, service_down):
    service_down("edge")
    report = platform_health(settings)
    assert report.down == ["edge.audio", "edge.images", "edge.static"]
    assert "unreachable" in report.edge["error"] and "zone audio" in report.edge["error"]
    assert report.edge["zones"]["images"]["ok"] is False
    assert "cdn audio" in report.format() and "UNHEALTHY: edge.audio, edge.images, edge.static" in report.format()
    from csl.health import HealthReport

    # tolerating "edge" tolerates every zone
    tolerant = HealthReport(database=report.database, storage=report.storage, edge=report.edge,
                            tolerate=frozenset({"edge"}))
    assert tolerant.down == report.down and tolerant.failing == [] and tolerant.ok


def test_primary_storage_down_makes_the_edge_backend_unhealthy_too(settings, service_down):
    service_down("s3-primary")
    report = platform_health(settings)
    assert "storage.primary" in report.down
    assert report.storage["fallback"]["ok"] is True


def test_cli_health_json(stack_env):
    result = run_cli("health", "--json", env=cli_env(stack_env))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["database"]["reads"]["target"] == "replica"


def test_cli_health_exit_1_and_names_the_component(stack_env, service_down):
    service_down("pg-replica")
    result = run_cli("health", env=cli_env(stack_env))
    assert result.returncode == 1
    assert "UNHEALTHY: database.replica" in result.stdout
    assert "reads routed to    primary" in result.stdout


def test_cli_bad_config_is_one_line_and_exit_2(stack_env):
    result = run_cli("health", env=cli_env(stack_env, DATABASE_URL="mysql://root@localhost/x"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr and "postgresql://" in result.stderr
    assert stack_env["MINIO_SECRET_KEY"] not in result.stderr + result.stdout


def test_cli_bad_arguments_exit_2(stack_env):
    for args in (["seed", "--scale", "huge"], ["frobnicate"], ["seed", "--seed", "x"]):
        result = run_cli(*args, env=cli_env(stack_env))
        assert result.returncode == 2, args
        assert result.stderr.strip().count("\n") == 0, result.stderr


# -- joining the checks of one Airflow run (csl.health.summarise) ----------------------------------

def component(name, ok=True, **parts):
    if name == "database":
        report = {part: {"ok": parts.get(part, True), "error": None if parts.get(part, True) else f"{part} gone"}
                  for part in ("primary", "replica", "reads")}
        report["reads"]["target"] = "primary"
        return {"component": "database", "report": report}
    return {"component": name, "report": {"ok": ok, **({} if ok else {"error": "unreachable"})}}


EXPECTED = ["database", "storage.primary", "storage.fallback", "edge"]


def test_a_tolerated_part_is_down_but_does_not_fail_the_run():
    from csl.health import summarise

    summary = summarise([component("database", replica=False), component("storage.primary"),
                         component("storage.fallback"), component("edge")],
                        expected=EXPECTED, tolerate=["database.replica"])
    assert summary.down == ["database.replica"] and summary.failing == [] and summary.ok
    summary.raise_if_unhealthy()
    assert summary.as_dict()["tolerated"] == ["database.replica"]


def test_a_check_that_reported_nothing_is_down_and_named():
    from csl.health import ComponentDown, summarise

    summary = summarise([component("database"), component("storage.primary"), None, component("edge", ok=False)],
                        expected=EXPECTED, tolerate=None)
    assert summary.failing == ["edge", "storage.fallback (no report)"]
    with pytest.raises(ComponentDown, match="down: edge, storage.fallback"):
        summary.raise_if_unhealthy()


def test_an_unknown_component_in_tolerate_is_refused():
    from csl.health import HealthParamsError, summarise

    with pytest.raises(HealthParamsError, match="database.everything"):
        summarise([], expected=[], tolerate=["database.everything"])


def test_a_replica_down_is_reported_but_only_primary_or_reads_fail_the_database_check():
    from csl.health import ComponentDown, ComponentReport

    replica_down = ComponentReport(**component("database", replica=False))
    assert replica_down.failing == [] and "reads routed to primary" in replica_down.replica_note
    replica_down.raise_if_down()
    primary_down = ComponentReport(**component("database", primary=False, reads=False))
    with pytest.raises(ComponentDown, match="database.primary, database.reads down: database.primary: primary gone"):
        primary_down.raise_if_down()
