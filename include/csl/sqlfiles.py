"""SQL lives in ``include/sql/`` as files; Python loads it by name, never pastes it twice."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

__all__ = ["SQL_DIR", "load", "sql_dir"]

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def sql_dir() -> Path:
    """The SQL folder (``CSL_SQL_DIR`` overrides, for installs outside the repo)."""
    override = os.environ.get("CSL_SQL_DIR")
    return Path(override) if override else SQL_DIR


@lru_cache(maxsize=128)
def load(name: str) -> str:
    """The text of ``include/sql/<name>`` (e.g. ``"health/replica_lag.sql"``)."""
    path = sql_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"SQL file {name!r} not found under {sql_dir()}")
    return path.read_text()
