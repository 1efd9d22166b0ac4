"""SQL lives in ``include/sql/`` as files; Python loads it by name, never pastes it twice.

The package reaches it as ``csl/sql`` (in the checkout a link to ``include/sql``; in the wheel the
files themselves, shipped as package data), through ``importlib.resources``: the same lookup in
a checkout, an editable install and a baked image."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

__all__ = ["SQL_DIR", "load", "sql_dir", "statements"]

SQL_DIR = Path(str(files("csl") / "sql"))


def sql_dir() -> Path:
    """The SQL folder (``CSL_SQL_DIR`` overrides it, e.g. to try edited SQL without reinstalling)."""
    override = os.environ.get("CSL_SQL_DIR")
    return Path(override) if override else SQL_DIR


@lru_cache(maxsize=128)
def load(name: str) -> str:
    """The text of ``include/sql/<name>`` (e.g. ``"storage/references.sql"``)."""
    path = sql_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"SQL file {name!r} not found under {sql_dir()}")
    return path.read_text()


def statements(text: str) -> list[str]:
    """A script's statements (split at a ``;`` that ends a line; comment-only chunks dropped).

    Parameters cannot be bound to a multi-statement string, so scripts that take parameters
    run statement by statement.
    """
    chunks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            chunks.append("\n".join(current))
            current = []
    if current:
        chunks.append("\n".join(current))
    return [c.strip() for c in chunks
            if any(ln.strip() and not ln.strip().startswith("--") for ln in c.splitlines())]
