"""Reading docker-compose.yaml as Docker Compose would, without docker: YAML (anchors and merge
keys resolved), then Compose's variable interpolation on every string value; and the checks the
tests run, each a function that returns the problems it finds, so a test can run it on the real
file (no problems) and on a broken copy (the problem named)."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / "stack" / "compose" / "env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

# Services without a healthcheck, and why (each must still be depended on with a condition)
NO_HEALTHCHECK = {
    "airflow-init": "one-shot: the others wait for service_completed_successfully",
}
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")

# Compose's interpolation: $$ is a literal $; ${VAR}, $VAR; ${VAR:-default} (unset or empty),
# ${VAR-default} (unset); ${VAR:?message} (unset or empty: an error), ${VAR?message} (unset);
# ${VAR:+alt}, ${VAR+alt}. Nested expressions are not used in our file and not supported here.
_TOKEN = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\{?))")


class MissingVariable(ValueError):
    """A required variable (``${VAR:?…}``) is unset or empty."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


def interpolate_string(text: str, env: Mapping[str, str], used: set[str] | None = None) -> str:
    def replace(match: re.Match) -> str:
        if match["dollar"]:
            return "$"
        if match["bad"] is not None:
            raise ValueError(f"invalid interpolation format in {text!r}")
        name = match["braced"] or match["named"]
        if used is not None:
            used.add(name)
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if empty else value
        if op in (":?", "?"):
            if empty:
                raise MissingVariable(name, arg)
            return value
        if op in (":+", "+"):
            return "" if empty else arg
        return value or ""

    return _TOKEN.sub(replace, text)


def interpolate(node: Any, env: Mapping[str, str], used: set[str] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env, used)
    if isinstance(node, dict):
        return {key: interpolate(value, env, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, used) for value in node]
    return node


def raw(path: Path = COMPOSE) -> dict:
    """The file as YAML gives it: anchors and merge keys resolved, nothing interpolated."""
    return yaml.safe_load(path.read_text())


def env_example(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    return {name: value for name, (value, _) in documented(path).items()}


def documented(path: Path = ENV_EXAMPLE) -> dict[str, tuple[str, str]]:
    """Each variable of the env example: (its value, the comment lines just above it)."""
    found, comment, after_variable = {}, [], False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
        elif stripped.startswith("#"):
            comment = [] if after_variable else comment
            comment.append(stripped.lstrip("# "))
        else:
            name, _, value = stripped.partition("=")
            found[name.strip()] = (value, " ".join(comment))
        after_variable = bool(stripped) and not stripped.startswith("#")
    return found


def required_variables(path: Path = COMPOSE) -> set[str]:
    """The variables the file interpolates with ``:?`` or ``?`` (``$${…}`` is not interpolation)."""
    text = re.sub(r"\$\$", "", json.dumps(raw(path)))  # values only: not the comments
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))


def filled_env() -> dict[str, str]:
    """env.example with every required value filled as its comments ask (a hex secret)."""
    required = required_variables()
    return {name: value or (f"{sum(map(ord, name)):06x}abcdef0123456789" if name in required else "")
            for name, value in env_example().items()}


def loaded(env: Mapping[str, str] | None = None, path: Path = COMPOSE) -> dict:
    return interpolate(raw(path), filled_env() if env is None else env)


def variables_used(path: Path = COMPOSE) -> set[str]:
    used: set[str] = set()
    interpolate(raw(path), filled_env(), used)
    return used


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


# --- checks: each returns a list of problems ------------------------------------------------
def pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and "${" not in image


def image_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        image = service.get("image")
        if not image:
            problems.append(f"{name}: no image")
        elif not pinned(image):
            problems.append(f"{name}: image {image} is not pinned to a tag")
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            if not dockerfile.is_file():
                problems.append(f"{name}: no {dockerfile.relative_to(REPO)}")
                continue
            for base in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE):
                if not pinned(base):
                    problems.append(f"{name}: {dockerfile.relative_to(REPO)} builds FROM {base}, not pinned")
    return problems


def healthcheck_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        check = service.get("healthcheck")
        if name in NO_HEALTHCHECK:
            if check is not None:
                problems.append(f"{name}: listed as without a healthcheck but has one")
            continue
        if check is None or check.get("disable"):
            problems.append(f"{name}: no healthcheck")
        elif not check.get("test") or check["test"][0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"{name}: healthcheck test should be a CMD or CMD-SHELL list")
    return problems


def dependency_problems(compose: dict) -> list[str]:
    problems = []
    all_services = services(compose)
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, spec in depends.items():
            if target not in all_services:
                problems.append(f"{name}: depends on {target}, which is not a service")
                continue
            condition = (spec or {}).get("condition")
            if condition not in CONDITIONS:
                problems.append(f"{name}: depends on {target} without a condition")
            elif condition == "service_healthy" and "healthcheck" not in all_services[target]:
                problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
            elif condition == "service_completed_successfully" and all_services[target].get("restart") != "no":
                problems.append(f"{name}: waits for {target} to complete, which is restarted")
            if "profiles" in all_services[target] and "profiles" not in service:
                problems.append(f"{name}: depends on {target}, which only runs under a profile")
    # no cycles
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            problems.append("dependency cycle: " + " -> ".join([*path, node]))
            return
        state[node] = 1
        for target in all_services.get(node, {}).get("depends_on", {}) or {}:
            if target in all_services:
                visit(target, [*path, node])
        state[node] = 2

    for name in all_services:
        visit(name, [])
    return problems


def port_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            if not text.startswith("127.0.0.1:"):
                problems.append(f"{name}: port {text} is not bound to 127.0.0.1")
    return problems


SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_AUTH$")
URL_CREDENTIALS = re.compile(r"://[^/:@\s]*:(?P<secret>[^@\s]*)@")
JSON_CREDENTIALS = re.compile(r'"(?:login|password)":\s*"(?P<secret>[^"]*)"')


def literal_secret_problems(compose_raw: dict) -> list[str]:
    """Secrets come from the environment: in the file as written (not interpolated), a secret-like
    variable, a URL's password and a connection's login and password are each empty or ``${…}``."""
    problems = []
    for name, service in services(compose_raw).items():
        for key, value in (service.get("environment") or {}).items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key) and not key.endswith("_FILE") and value and "${" not in value:
                problems.append(f"{name}: {key} is a literal value")
            for pattern in (URL_CREDENTIALS, JSON_CREDENTIALS):
                for match in pattern.finditer(value):
                    if match["secret"] and "${" not in match["secret"]:
                        problems.append(f"{name}: {key} holds a literal credential")
    return problems


def bind_mounts(service: dict) -> Iterator[tuple[Path, str]]:
    """(host path in the repo, container path) of each ./ bind mount."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = volume.split(":")[:2]
            yield REPO / source, target


def mount_problems(compose: dict) -> list[str]:
    problems = []
    declared = set((compose.get("volumes") or {}).keys())
    for name, service in services(compose).items():
        for source, _ in bind_mounts(service):
            if not source.exists():
                problems.append(f"{name}: mounts {source.relative_to(REPO)}, which does not exist")
        for volume in service.get("volumes", []):
            if (isinstance(volume, str) and not volume.startswith(("./", "/"))
                    and volume.split(":")[0] not in declared):
                problems.append(f"{name}: named volume {volume.split(':')[0]} is not declared")
    return problems


def subnet(compose: dict) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])


def mutated(compose: dict, edit) -> dict:
    changed = copy.deepcopy(compose)
    edit(changed)
    return changed
