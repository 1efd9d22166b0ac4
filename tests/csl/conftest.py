"""Fixtures shared by the csl tests."""

from __future__ import annotations

import psycopg
import pytest

from csl.devdata.seed import seed
from csl.migrations import migrate


@pytest.fixture
def platform_db(fresh_database, tmp_path):
    """A fresh database with the platform schema and the demo rows (no storage objects)."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
        seed(conn, scale_name="demo", seed_value=11, workdir=tmp_path / "seed", primary=None)
    return fresh_database
