"""docker-compose.yaml without docker: valid against the Compose Specification's JSON schema
(``data/compose-spec.json``, from compose-spec/compose-spec at a08f8d51631b7127ddac3d2c65537db429d0f1d0,
2025-10-28) after Compose's interpolation; pinned images, healthchecks, dependencies with conditions,
loopback-only ports, secrets only from the environment and every variable documented; the Airflow
services as the official Airflow 3 quick-start has them, on the image the Dockerfile builds; the
mounted files (Prometheus, the edge's VCL, Grafana's provisioning) valid where they are mounted.
Each check is also shown catching a broken copy."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import compose_edge_vcl as vcl
import jsonschema
import pytest
import yaml

from . import composefile as cf
from .composefile import REPO

AIRFLOW_SERVICES = ("airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker-1", "airflow-worker-2", "flower")
WORKERS = ("airflow-worker-1", "airflow-worker-2")


@pytest.fixture(scope="module")
def compose() -> dict:
    return cf.loaded()


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(cf.SCHEMA.read_text())
    assert schema["$schema"].rstrip("#") == "https://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- interpolation and the schema -----------------------------------------------------------
def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert cf.interpolate_string("a$${HOSTNAME}b $$x", env) == "a${HOSTNAME}b $x"
    assert cf.interpolate_string("${SET} $SET ${UNSET}", env) == "v v "
    assert cf.interpolate_string("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:-d}", env) == "d  d v"
    assert cf.interpolate_string("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    assert cf.interpolate_string("${EMPTY?fine when set}", env) == ""
    with pytest.raises(cf.MissingVariable, match="EMPTY"):
        cf.interpolate_string("${EMPTY:?must be set}", env)
    with pytest.raises(cf.MissingVariable, match="UNSET"):
        cf.interpolate_string("${UNSET?must be set}", env)
    with pytest.raises(ValueError, match="invalid interpolation"):
        cf.interpolate_string("${}", env)


def test_the_compose_file_is_valid_against_the_compose_spec(compose, validator):
    assert schema_errors(validator, compose) == []
    # the schema does catch what compose would refuse
    broken = cf.mutated(compose, lambda c: c["services"]["redis"].update(imagee="redis:7"))
    assert any("imagee" in e for e in schema_errors(validator, broken))
    broken = cf.mutated(compose, lambda c: c["services"]["edge"]["healthcheck"].update(test=5))
    assert any("healthcheck/test" in e for e in schema_errors(validator, broken))
    broken = cf.mutated(compose, lambda c: c["services"]["redis"].update(restart=["always"]))
    assert any(e.startswith("services/redis/restart") for e in schema_errors(validator, broken))


def test_every_required_secret_is_refused_when_unset():
    required = cf.required_variables()
    # the env example says which are required, and gives them no value
    for name, (value, comment) in cf.documented().items():
        assert ("(required)" in comment) == (name in required), name
        assert not (name in required and value), name
    assert {"AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "REDIS_PASSWORD", "CSL_DB_PASSWORD"} <= required
    for name in sorted(required):
        env = {k: v for k, v in cf.filled_env().items() if k != name}
        with pytest.raises(cf.MissingVariable) as refused:
            cf.loaded(env)
        assert refused.value.name == name
        with pytest.raises(cf.MissingVariable):
            cf.loaded({**env, name: ""})  # ":?" also refuses an empty value


def test_optional_variables_fall_back_to_their_documented_default():
    env = {k: v for k, v in cf.filled_env().items() if k in cf.required_variables()}  # secrets only
    compose = cf.loaded(env)
    example = cf.env_example()
    worker = compose["services"]["airflow-worker-1"]
    assert worker["image"] == f"csl-pipelines-airflow:{example['CSL_IMAGE_TAG']}"
    assert worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == example["AIRFLOW_WORKER_CONCURRENCY"]
    init_env = compose["services"]["airflow-init"]["environment"]
    assert init_env["CSL_MIGRATE_WITH_PLATFORM_SCHEMA"] == example["CSL_MIGRATE_WITH_PLATFORM_SCHEMA"]
    # the image's default tag is the package's version
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)[1]
    assert example["CSL_IMAGE_TAG"] == version
    assert f"${{CSL_IMAGE_TAG:-{version}}}" in cf.COMPOSE.read_text()


def test_every_variable_is_documented_and_every_documented_one_is_used():
    used, documented = cf.variables_used(), set(cf.env_example())
    assert used - documented == set(), "used by docker-compose.yaml, missing in stack/compose/env.example"
    assert documented - used == set(), "documented in stack/compose/env.example, unused by docker-compose.yaml"
    text = cf.ENV_EXAMPLE.read_text()
    assert not re.search(r"^[A-Z_]*(PASSWORD|SECRET|KEY)[A-Z_]*=\S", text, re.MULTILINE), "a secret with a value"
    # and the check sees a variable that is not documented
    mutated = cf.COMPOSE.read_text().replace("${REDIS_PASSWORD:?", "${REDIS_PASS:?", 1)
    used = set()
    cf.interpolate(yaml.safe_load(mutated), {**cf.filled_env(), "REDIS_PASS": "x"}, used)
    assert "REDIS_PASS" in used - documented


# --- services -------------------------------------------------------------------------------
def test_every_image_is_pinned(compose):
    assert cf.image_problems(compose) == []
    broken = cf.mutated(compose, lambda c: c["services"]["redis"].update(image="redis:latest"))
    assert cf.image_problems(broken) == ["redis: image redis:latest is not pinned to a tag"]
    broken = cf.mutated(compose, lambda c: c["services"]["grafana"].update(image="grafana/grafana"))
    assert cf.image_problems(broken) == ["grafana: image grafana/grafana is not pinned to a tag"]


def test_every_service_has_a_healthcheck_but_the_listed_one_shots(compose):
    assert cf.healthcheck_problems(compose) == []
    assert set(cf.NO_HEALTHCHECK) == {"airflow-init"}
    broken = cf.mutated(compose, lambda c: c["services"]["edge"].pop("healthcheck"))
    assert cf.healthcheck_problems(broken) == ["edge: no healthcheck"]


def test_dependencies_exist_and_wait_on_a_condition(compose):
    assert cf.dependency_problems(compose) == []
    broken = cf.mutated(compose, lambda c: c["services"]["grafana"]["depends_on"].update(
        {"prometheus2": {"condition": "service_healthy"}}))
    assert cf.dependency_problems(broken) == ["grafana: depends on prometheus2, which is not a service"]
    broken = cf.mutated(compose, lambda c: c["services"]["airflow-db"].update(
        depends_on={"airflow-scheduler": {"condition": "service_started"}}))
    assert any("cycle" in p for p in cf.dependency_problems(broken))
    broken = cf.mutated(compose, lambda c: c["services"]["airflow-init"].update(restart="always"))
    assert any("which is restarted" in p for p in cf.dependency_problems(broken))


def test_host_ports_are_loopback_only(compose):
    assert cf.port_problems(compose) == []
    broken = cf.mutated(compose, lambda c: c["services"]["grafana"].update(ports=["3000:3000"]))
    assert cf.port_problems(broken) == ["grafana: port 3000:3000 is not bound to 127.0.0.1"]


def test_secrets_come_only_from_the_environment():
    written = cf.raw()
    assert cf.literal_secret_problems(written) == []
    broken = cf.mutated(written, lambda c: c["services"]["grafana"]["environment"].update(
        GF_SECURITY_ADMIN_PASSWORD="admin"))
    assert cf.literal_secret_problems(broken) == ["grafana: GF_SECURITY_ADMIN_PASSWORD is a literal value"]
    broken = cf.mutated(written, lambda c: c["services"]["pg-exporter-replica"]["environment"].update(
        DATA_SOURCE_NAME="postgresql://csl_metrics:hunter2@platform-db-replica:5432/x"))
    assert cf.literal_secret_problems(broken) == ["pg-exporter-replica: DATA_SOURCE_NAME holds a literal credential"]


def test_mounted_files_and_named_volumes_exist(compose):
    assert cf.mount_problems(compose) == []
    broken = cf.mutated(compose, lambda c: c["services"]["prometheus"]["volumes"].append(
        "./stack/compose/missing.yml:/etc/prometheus/missing.yml:ro"))
    assert cf.mount_problems(broken) == ["prometheus: mounts stack/compose/missing.yml, which does not exist"]


# --- Airflow --------------------------------------------------------------------------------
def test_the_airflow_services_run_the_built_image_on_the_celery_executor(compose):
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in cf.COMPOSE.read_text()
    services = compose["services"]
    assert set(AIRFLOW_SERVICES) <= set(services)
    for name in AIRFLOW_SERVICES:
        service, env = services[name], services[name]["environment"]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert service["image"].startswith("csl-pipelines-airflow:"), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
        assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter" and env["AIRFLOW__METRICS__STATSD_ON"] == "True"
        assert env["AIRFLOW__METRICS__STATSD_PREFIX"] == "airflow"
        for shared in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                       "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW_CONN_CSL_DB"):
            assert env[shared] == services["airflow-scheduler"]["environment"][shared], (name, shared)
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert services["flower"]["profiles"] == ["flower"]


def test_two_workers_with_their_own_host_names_and_the_official_healthchecks(compose):
    services = compose["services"]
    workers = [name for name, s in services.items() if s.get("command") == "celery worker"]
    assert workers == list(WORKERS)
    assert len({services[w]["hostname"] for w in workers}) == 2
    for worker in workers:
        test = services[worker]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and "celery --app airflow.providers.celery.executors.celery_executor.app" in test[1]
        assert 'inspect ping -d "celery@${HOSTNAME}"' in test[1]  # $$ in the file: the container's own variable
        assert services[worker]["environment"]["DUMB_INIT_SETSID"] == "0"
        assert services[worker]["depends_on"]["airflow-api-server"]["condition"] == "service_healthy"
    health = {name: services[name]["healthcheck"]["test"] for name in AIRFLOW_SERVICES if name != "airflow-init"}
    assert "http://localhost:8080/api/v2/monitor/health" in health["airflow-api-server"]
    assert "http://localhost:8974/health" in health["airflow-scheduler"]
    assert health["airflow-triggerer"][1] == "airflow jobs check --job-type TriggererJob --local"
    assert health["airflow-dag-processor"][1] == "airflow jobs check --job-type DagProcessorJob --local"


def test_init_migrates_imports_the_pools_the_dags_use_and_runs_csl_init(compose):
    script = compose["services"]["airflow-init"]["command"][-1]
    steps = [line for line in script.splitlines() if line and not line.startswith("set ")]
    assert steps[0] == "airflow db migrate"
    assert steps[1] == "airflow pools import /opt/airflow/pools.json"
    assert steps[2].endswith("python /opt/airflow/csl_init.py")
    assert "COPY --chown=airflow:0 stack/airflow/pools.json /opt/airflow/pools.json" in (REPO / "Dockerfile").read_text()
    pools = json.loads((REPO / "stack" / "airflow" / "pools.json").read_text())
    used = set()
    for path in [*(REPO / "dags").glob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        used |= set(re.findall(r"\bpool=\"([a-z_]+)\"", path.read_text()))
    assert used and used <= set(pools), used - set(pools)
    mounts = dict(cf.bind_mounts(compose["services"]["airflow-init"]))
    assert mounts[REPO / "stack" / "compose" / "csl_init.py"] == "/opt/airflow/csl_init.py"


def test_the_connections_resolve_through_the_glue(compose, tmp_path):
    """The interpolated AIRFLOW_CONN_* values, parsed by csl_airflow.connections as a task would."""
    env = {k: v for k, v in compose["services"]["airflow-worker-1"]["environment"].items() if k.startswith("AIRFLOW_CONN_")}
    code = ("import json; from csl_airflow.connections import settings_from_connections as s; x = s();"
            "print(json.dumps({'db': x.database.primary_url.split('@')[1], 'replica': x.database.replica_url.split('@')[1],"
            "'storage': [[p.name, p.kind, p.endpoint_url, p.bucket, p.published_bucket, p.listing_order] for p in x.storage],"
            "'edge': [x.edge.provider, x.edge.base_url]}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env={
        **env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")])})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["db"] == "platform-db:5432/cultural_sound_lab"
    assert seen["replica"] == "platform-db-replica:5432/cultural_sound_lab"
    assert seen["storage"] == [
        ["primary", "minio", "http://minio:9000", "cultural-audio", "cultural-audio-published", "path"],
        ["fallback", "s3", "http://s3-fallback:9000", "cultural-audio-fallback", None, "path"]]
    assert seen["edge"] == ["varnish", "http://edge:6081"]


# --- the platform's database ----------------------------------------------------------------
def test_the_platform_database_has_its_extensions_and_a_streaming_replica(compose):
    services = compose["services"]
    primary, replica = services["platform-db"], services["platform-db-replica"]
    assert "shared_preload_libraries=pg_stat_statements" in primary["command"]
    assert "wal_level=replica" in primary["command"]
    assert replica["image"] == primary["image"] and replica["entrypoint"] == ["csl-replica-entrypoint"]
    folder = REPO / "stack" / "compose" / "postgres"
    assert "postgresql-15-hypopg" in (folder / "Dockerfile").read_text()
    init = (folder / "initdb" / "10-csl.sh").read_text()
    for extension in ("pg_stat_statements", "hypopg", "pgstattuple"):
        assert f"CREATE EXTENSION IF NOT EXISTS {extension};" in init
    entry = (folder / "replica-entrypoint.sh").read_text()
    assert re.search(r"pg_basebackup .*\n?.* -R\b", entry)
    for script in (folder / "initdb" / "10-csl.sh", folder / "replica-entrypoint.sh"):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, script
        assert os.access(script, os.X_OK), script


# --- mounted configuration ------------------------------------------------------------------
def prometheus_layout(compose: dict, root) -> object:
    """The prometheus container's mounted files, copied under ``root`` at their container paths;
    returns the config file's path there."""
    for source, target in cf.bind_mounts(compose["services"]["prometheus"]):
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    command = compose["services"]["prometheus"]["command"]
    config = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config.file="))
    return root / config.lstrip("/")


def promtool(*args: str):
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_prometheus_config_is_valid_where_it_is_mounted(compose, tmp_path):
    config = prometheus_layout(compose, tmp_path / "ok")
    checked = promtool("check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr
    # without the rules mount the same config is refused
    broken = cf.mutated(compose, lambda c: c["services"]["prometheus"].update(
        volumes=[v for v in c["services"]["prometheus"]["volumes"] if "alerts.rules.yml" not in v]))
    checked = promtool("check", "config", prometheus_layout(broken, tmp_path / "broken"))
    assert checked.returncode != 0


def test_prometheus_scrapes_each_exporter_by_service_name_like_the_local_stack(compose):
    config = yaml.safe_load((REPO / "stack" / "compose" / "prometheus.yml").read_text())
    local = yaml.safe_load(re.sub(r"\{\{[A-Z_]+\}\}", "1", (REPO / "stack" / "prometheus" / "prometheus.yml").read_text()))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {job["job_name"] for job in local["scrape_configs"]} <= set(jobs)
    assert config["rule_files"] == local["rule_files"] == ["alerts.rules.yml"]
    services = compose["services"]
    for job in jobs.values():
        for group in job["static_configs"]:
            for target in group["targets"]:
                host = target.split(":")[0]
                assert host == "localhost" or host in services, target
    roles = {group["labels"]["role"]: group["targets"] for group in jobs["postgres"]["static_configs"]}
    assert roles == {"primary": ["pg-exporter-primary:9187"], "replica": ["pg-exporter-replica:9187"]}
    # Grafana's datasource declares the scrape interval its $__rate_interval is computed from
    datasource = yaml.safe_load((REPO / "stack" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == datasource["datasources"][0]["jsonData"]["timeInterval"]
    queries = {target: source.name for source, target in cf.bind_mounts(services["pg-exporter-primary"])}
    assert queries == {"/etc/postgres-exporter/queries.yaml": "postgres-exporter-queries.yaml"}
    queries = {target: source.name for source, target in cf.bind_mounts(services["pg-exporter-replica"])}
    assert queries == {"/etc/postgres-exporter/queries.yaml": "postgres-exporter-replica-queries.yaml"}


def test_grafana_provisioning_paths_fit_the_mounts(compose):
    grafana = compose["services"]["grafana"]
    mounts = {source.relative_to(REPO).as_posix(): target for source, target in cf.bind_mounts(grafana)}
    assert mounts["stack/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((REPO / "stack" / "grafana" / "provisioning" / "dashboards" / "csl.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["stack/grafana/dashboards"]
    datasource = (REPO / "stack" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "${PROMETHEUS_URL}" in datasource and grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_the_statsd_mapping_gives_every_airflow_name_the_dashboard_and_alerts_use():
    mappings = yaml.safe_load((REPO / "stack" / "compose" / "statsd-mappings.yml").read_text())["mappings"]
    produced = [re.sub(r"\$\{?1\}?", "[a-z_]+", m["name"]) for m in mappings]
    # names statsd-exporter gives unmapped StatsD names (dots to underscores), that Airflow 3.3 sends
    defaults = {"airflow_dag_processing_import_errors", "airflow_dag_processor_heartbeat", "airflow_triggerer_heartbeat"}

    def unmapped(names: set[str]) -> set[str]:
        return {n for n in names if n not in defaults and not any(re.fullmatch(p, n) for p in produced)}

    dashboard = (REPO / "stack" / "grafana" / "dashboards" / "csl-pipelines.json").read_text()
    alerts = (REPO / "stack" / "prometheus" / "alerts.rules.yml").read_text()
    wanted = set(re.findall(r"\b(airflow_[a-z_]+)", dashboard + alerts))
    assert {"airflow_ti_finish", "airflow_task_duration", "airflow_dagrun_failed", "airflow_pool_running_slots"} <= wanted
    assert unmapped(wanted) == set()
    assert unmapped({*wanted, "airflow_made_up_figure"}) == {"airflow_made_up_figure"}
    ti_finish = [m for m in mappings if m["name"] == "airflow_ti_finish"]
    assert ti_finish and all(set(m["labels"]) == {"dag_id", "task_id", "state"} for m in ti_finish)


def test_the_edge_vcl_is_the_template_rendered_for_compose(compose):
    assert vcl.render(vcl.TEMPLATE.read_text()) == vcl.RENDERED.read_text(), \
        "stale: run python scripts/compose_edge_vcl.py"
    assert cf.subnet(compose) == ipaddress.ip_network(vcl.COMPOSE_SUBNET)
    network, bits = vcl.COMPOSE_SUBNET.split("/")
    assert f'"{network}"/{bits};' in vcl.RENDERED.read_text()
    edge = compose["services"]["edge"]
    assert dict(cf.bind_mounts(edge))[vcl.RENDERED] == "/etc/varnish/edge.vcl"
    assert vcl.BACKEND_HOST in compose["services"] and edge["depends_on"][vcl.BACKEND_HOST]
    primary = compose["services"]["airflow-worker-1"]["environment"]["AIRFLOW_CONN_CSL_STORAGE_PRIMARY"]
    assert json.loads(primary)["extra"]["published_bucket"] == vcl.PUBLISHED_BUCKET
    # a template line the renderer relies on, changed, is refused rather than copied
    with pytest.raises(ValueError, match="exactly one line"):
        vcl.render(vcl.TEMPLATE.read_text().replace('.host = "127.0.0.1";', '.host = "localhost";'))


@pytest.mark.skipif(shutil.which("varnishd") is None, reason="varnishd is not installed")
def test_the_edge_vcl_compiles(request):
    """varnishd -C (VCL to C, no server) with the backend host made resolvable here."""
    # varnishd run as root reads the VCL as its own unprivileged user: a folder others may read
    folder = Path(tempfile.mkdtemp(prefix="csl-vcl-"))
    folder.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))

    def compile_vcl(text: str):
        path = folder / "edge.vcl"
        path.write_text(text.replace(f'.host = "{vcl.BACKEND_HOST}";', '.host = "127.0.0.1";'))
        path.chmod(0o644)
        return subprocess.run(["varnishd", "-C", "-n", str(folder / "work"), "-f", str(path)],
                              capture_output=True, text=True, timeout=120, check=False)

    done = compile_vcl(vcl.RENDERED.read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    network, bits = vcl.COMPOSE_SUBNET.split("/")
    broken = compile_vcl(vcl.RENDERED.read_text().replace(f'"{network}"/{bits};', f'"{network}"/33;'))
    assert broken.returncode != 0


def statsd_map(mappings: list[dict], name: str) -> tuple[str, dict[str, str]] | None:
    """statsd-exporter's matching, as documented: glob mappings first (``*`` is one dot-free
    part), then regex mappings in order; ``$n`` / ``${n}`` in the name and labels are the captures."""
    def expand(template: str, groups: tuple[str, ...]) -> str:
        return re.sub(r"\$\{?(\d+)\}?", lambda m: groups[int(m[1]) - 1], template)

    globs = [m for m in mappings if m.get("match_type", "glob") == "glob"]
    regexes = [m for m in mappings if m.get("match_type") == "regex"]
    for mapping in globs:
        pattern = "\\.".join("([^.]+)" if part == "*" else re.escape(part) for part in mapping["match"].split("."))
        if match := re.fullmatch(pattern, name):
            return expand(mapping["name"], match.groups()), {k: expand(v, match.groups())
                                                              for k, v in mapping.get("labels", {}).items()}
    for mapping in regexes:
        if match := re.fullmatch(mapping["match"], name):
            return expand(mapping["name"], match.groups()), {k: expand(v, match.groups())
                                                              for k, v in mapping.get("labels", {}).items()}
    return None


@pytest.mark.parametrize(("statsd", "metric", "labels"), [
    ("airflow.dag.csl_storage_integrity.sweep.duration", "airflow_task_duration",
     {"dag_id": "csl_storage_integrity", "task_id": "sweep"}),
    ("airflow.dag.csl_demo.group.inner.duration", "airflow_task_duration", {"dag_id": "csl_demo", "task_id": "group.inner"}),
    ("airflow.ti.finish.csl_index_install.build.success", "airflow_ti_finish",
     {"dag_id": "csl_index_install", "task_id": "build", "state": "success"}),
    ("airflow.ti.finish.csl_demo.group.inner.failed", "airflow_ti_finish",
     {"dag_id": "csl_demo", "task_id": "group.inner", "state": "failed"}),
    ("airflow.dagrun.duration.failed.csl_cdn_purge", "airflow_dagrun_failed", {"dag_id": "csl_cdn_purge"}),
    ("airflow.dagrun.duration.success.csl_cdn_purge", "airflow_dagrun_duration", {"dag_id": "csl_cdn_purge"}),
    ("airflow.pool.open_slots.csl_ddl", "airflow_pool_open_slots", {"pool": "csl_ddl"}),
    ("airflow.pool.running_slots.csl_maintenance", "airflow_pool_running_slots", {"pool": "csl_maintenance"}),
    ("airflow.pool.queued_slots.default_pool", "airflow_pool_queued_slots", {"pool": "default_pool"}),
    ("airflow.executor.open_slots.CeleryExecutor", "airflow_executor_open_slots", {"executor": "CeleryExecutor"}),
    ("airflow.scheduler_heartbeat", "airflow_scheduler_heartbeat", {"type": "counter"}),
    ("airflow.operator_failures_SweepOperator", "airflow_operator_failures", {"operator": "SweepOperator"}),
])
def test_the_statsd_mapping_names_airflows_metrics_like_the_local_stack(statsd, metric, labels):
    mappings = yaml.safe_load((REPO / "stack" / "compose" / "statsd-mappings.yml").read_text())["mappings"]
    assert statsd_map(mappings, statsd) == (metric, labels)
    # and an unmapped name is left to statsd-exporter's default naming
    assert statsd_map(mappings, "airflow.triggerer_heartbeat") is None


def test_csl_init_writes_the_admin_password_file_privately_and_forgets_the_password(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("csl_compose_init", REPO / "stack" / "compose" / "csl_init.py")
    init = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(init)
    target = tmp_path / "passwords.json"
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(target))
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", 'a"b\\c')
    init.write_passwords()
    assert json.loads(target.read_text()) == {"admin": 'a"b\\c'}
    assert target.stat().st_mode & 0o777 == 0o600
    assert "AIRFLOW_ADMIN_PASSWORD" not in os.environ  # not inherited by what runs next
    with pytest.raises(SystemExit, match="AIRFLOW_ADMIN_PASSWORD"):
        init.write_passwords()
