"""The wheel is honest: built from the checkout, installed into a fresh virtualenv with the
checkout nowhere on the path, ``python -m csl`` runs and finds its SQL inside the installed
package (a baked image has no ``include/`` folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

UV = Path(sys.executable).parent / "uv"  # installed with the project's requirements (Makefile)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path, timeout: float = 600):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the python of a fresh virtualenv it is installed in)."""
    work = tmp_path_factory.mktemp("wheel")
    built = run([UV, "build", "--wheel", "--out-dir", work / "dist", REPO], cwd=work)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((work / "dist").glob("csl_pipelines-*.whl"))
    venv = run([UV, "venv", "--python", sys.executable, work / "venv"], cwd=work)
    assert venv.returncode == 0, venv.stderr[-2000:]
    python = work / "venv" / "bin" / "python"
    done = run([UV, "pip", "install", "--python", python, wheel], cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return wheel, python


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no virtualenv of the checkout: only what the fresh one installed."""
    env = {**os.environ, "CSL_ENV_FILE": os.devnull, **extra}
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CSL_SQL_DIR")}


def test_the_wheel_ships_every_package_and_the_sql(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("csl", "csl/storage", "csl/settlement", "csl/maintenance", "csl/reports", "csl/cdn", "csl/devdata"):
        assert f"{package}/__init__.py" in names, package
    shipped = {n.removeprefix("csl/sql/") for n in names if n.startswith("csl/sql/")}
    expected = {str(p.relative_to(REPO / "include" / "sql")) for p in (REPO / "include" / "sql").rglob("*.sql")}
    assert shipped == expected and expected
    assert not [n for n in names if n.startswith(("tests/", "dags/", "plugins/", "include/"))]


def test_the_installed_cli_runs_outside_the_checkout_and_loads_its_sql(installed, tmp_path, fresh_database, stack_env):
    _, python = installed
    where = run([python, "-c", "import csl, csl.sqlfiles as s; print(csl.__file__); print(s.SQL_DIR)"],
                env=clean_env(), cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    package, sql = where.stdout.split()
    venv = python.parent.parent
    assert Path(package).is_relative_to(venv) and Path(sql).is_relative_to(venv), where.stdout
    helped = run([python, "-m", "csl", "storage", "sweep", "--help"], env=clean_env(), cwd=tmp_path)
    assert helped.returncode == 0 and "--deep-sample" in helped.stdout, helped.stderr
    migrated = run([python, "-m", "csl", "migrate", "--with-platform-schema"],
                   env=clean_env(**{**stack_env, "DATABASE_URL": fresh_database}), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    assert "csl_ops/0016_publication" in migrated.stdout, migrated.stdout[-2000:]
