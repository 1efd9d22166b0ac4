"""End to end: the running Airflow's processes — and so every task they start — do not carry
the admin password the clients log in with, and no secret is on their command lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from devstack import AIRFLOW_SERVICES

from ..conftest import process_tree

pytestmark = pytest.mark.e2e


def test_airflow_processes_carry_no_admin_password(airflow, stack, stack_env):
    admin = stack_env["CSL_AIRFLOW_ADMIN_PASSWORD"]
    assert airflow.request("GET", "/dags", params={"limit": 1}).status_code == 200  # clients still log in
    secrets = dict(stack.secrets)
    checked = 0
    for service in AIRFLOW_SERVICES:
        pid = stack.pid(service)
        assert pid is not None, f"{service} is not running"
        for member in process_tree([pid]):
            try:
                environ = Path(f"/proc/{member}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{member}/cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue  # a worker that finished meanwhile
            checked += 1
            assert not [v for v in environ if v.startswith(b"CSL_AIRFLOW_ADMIN_PASSWORD=")], (service, member)
            assert not [v for v in environ if admin.encode() in v], (service, member)
            assert not [name for name, value in secrets.items() if value in cmdline], (service, cmdline)
    assert checked >= len(AIRFLOW_SERVICES)
