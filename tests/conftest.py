"""Fixtures for the real local stack: started once per test session on free ports.

Set ``CSL_TEST_STACK_STATE`` to the state folder of a stack started with
``scripts/devstack.py up --state DIR --env-file DIR/.env`` to reuse it (it is then left
running); otherwise a fresh stack is made under ``.local/test-stack-<pid>`` and removed.
The test stack also runs moto's S3 server (``--moto``): a provider that lists in byte order.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for folder in ("include", "plugins", "scripts"):
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))

from devstack import PLATFORM_DB, Stack, process_tree, remove_state


def _stop_on_sigterm(signum, frame):
    # CI or `timeout` ends a run with SIGTERM: unwind like Ctrl-C, so the stack fixture stops its servers
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _stop_on_sigterm)

from csl.config import Settings, load_env_file
from csl.db import Database


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    reuse = os.environ.get("CSL_TEST_STACK_STATE")
    if reuse:
        state = Path(reuse)
        handle = Stack(state, state / ".env")
        handle.up(airflow=False, moto=True)
        yield handle
        return
    state = REPO / ".local" / f"test-stack-{os.getpid()}"
    handle = Stack(state, state / ".env")
    try:
        handle.up(airflow=False, moto=True)
        yield handle
    finally:
        handle.down()
        remove_state(state)  # with what it keeps outside (a clone in root's 0700 home)


@pytest.fixture(scope="module")
def monitoring(stack: Stack) -> Iterator[Stack]:
    """Prometheus, the exporters and the StatsD bridge on the session's stack (devstack
    ``monitoring_up``; a running Airflow is restarted to send StatsD), for one test module: what
    it started is stopped afterwards, by pid, so other tests' statistics never see its scrapes."""
    from devstack import MONITORING_SERVICES

    already = {name for name in MONITORING_SERVICES if stack.pid(name) is not None}
    stack.monitoring_up()
    yield stack
    for name in reversed(MONITORING_SERVICES):
        if name not in already:
            stack.stop(name)


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> dict[str, str]:
    env: dict[str, str] = {}
    load_env_file(stack.env_file, environ=env)
    return env


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings.from_env(stack_env)


@pytest.fixture(scope="session")
def platform(stack: Stack, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The platform database migrated and loaded with the demo data set (objects included)."""
    from csl.devdata.seed import seed
    from csl.migrations import migrate
    from csl.storage import StorageProvider

    with Database(settings.require_database()) as db, db.connect_direct() as conn:
        migrate(conn, components=("platform", "csl_ops"))
        result = seed(conn, scale_name="demo", seed_value=42, workdir=tmp_path_factory.mktemp("seed"),
                      primary=StorageProvider(settings.provider("primary")),
                      fallback=StorageProvider(settings.provider("fallback")))
    return result


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    with Database(settings.require_database(), route_cache_s=0) as database:
        yield database


@pytest.fixture
def fresh_database(stack: Stack, settings: Settings) -> Iterator[str]:
    """A new, empty database owned by ``csl`` (dropped afterwards); yields its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    stack.psql(f"CREATE DATABASE {name} OWNER csl")
    url = settings.require_database().primary_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        stack.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def service_down(stack: Stack):
    """Stop a named service for the test; it is started again afterwards, whatever happens."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        stack.stop(name)
        stopped.append(name)

    yield stop
    for name in reversed(stopped):
        stack.start(name)


def wait_for_cleanup_horizon(url: str, timeout: float = 30.0) -> None:
    """Wait until the replica's feedback no longer holds back rows deleted so far."""
    import psycopg

    from csl.maintenance.vacuum import wait_for_cleanup_horizon as wait

    with psycopg.connect(url, autocommit=True) as conn:
        wait(conn, timeout_s=timeout)


__all__ = ["PLATFORM_DB", "process_tree", "wait_for_cleanup_horizon"]
