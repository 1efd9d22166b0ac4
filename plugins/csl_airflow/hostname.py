"""``[core] hostname_callable`` for several workers on one host.

Airflow records the host a task ran on (``task_instance.hostname``) from this callable. Two
Celery workers on one machine would both report its FQDN; each worker the local stack starts
gets its own name in ``CSL_WORKER_NAME`` (``scripts/devstack.py``), reported as
``<name>.<fqdn>``. Processes without the variable (scheduler, api-server) report the FQDN.
"""

from __future__ import annotations

import os
import re
import socket

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


def worker_hostname() -> str:
    fqdn = socket.getfqdn()
    name = os.environ.get("CSL_WORKER_NAME", "")
    if not name:
        return fqdn
    if not _NAME.fullmatch(name):
        raise ValueError(f"CSL_WORKER_NAME: expected a host label (letters, digits, '-'), got {name!r}")
    return f"{name}.{fqdn}"
