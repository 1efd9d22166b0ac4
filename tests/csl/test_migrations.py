"""csl.migrations on a fresh database: ordered, transactional, locked, idempotent."""

from __future__ import annotations

import shutil
import threading

import psycopg
import pytest

from csl.errors import DatabaseError
from csl.migrations import migrate
from csl.sqlfiles import SQL_DIR


def tables(conn, schema):
    return {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()}


def test_migrate_creates_everything_then_is_a_no_op(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        first = migrate(conn, components=("platform", "csl_ops"))
        assert [(m["component"], m["version"]) for m in first][:2] == [("platform", 1), ("csl_ops", 1)]
        assert {"users", "audio_samples", "licenses", "revenue_splits", "refunds", "payment_intents"} <= tables(conn, "public")
        assert {"schema_migrations", "task_runs"} <= tables(conn, "csl_ops")
        assert migrate(conn, components=("platform", "csl_ops")) == []
        rows = conn.execute("SELECT component, version FROM csl_ops.schema_migrations ORDER BY 1, 2").fetchall()
        assert len(rows) == len(first)


def test_platform_schema_has_no_critical_indexes_but_keeps_the_fk_ones(fresh_database):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("platform",))
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert "licenses_user_id_idx" in names and "revenue_splits_license_id_idx" in names
    assert not any(n.startswith("idx_") for n in names), "the 23 critical indexes belong to the index pipeline"


def test_concurrent_runners_apply_each_migration_once(fresh_database):
    results, errors = [], []

    def run():
        try:
            with psycopg.connect(fresh_database, autocommit=True) as conn:
                results.append(migrate(conn, components=("platform", "csl_ops")))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(len(r) for r in results)[:2] == [0, 0], "only one runner applies; the others find nothing to do"


def _copy_sql(tmp_path):
    root = tmp_path / "sql"
    shutil.copytree(SQL_DIR / "csl_ops", root / "csl_ops")
    return root


def test_a_failing_migration_leaves_nothing_half_written(fresh_database, tmp_path):
    root = _copy_sql(tmp_path)
    (root / "csl_ops" / "0999_broken.sql").write_text(
        "CREATE TABLE csl_ops.half_done (id int);\nSELECT * FROM no_such_table;\n")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            migrate(conn, root=root)
        assert "half_done" not in tables(conn, "csl_ops")
        versions = [r[0] for r in conn.execute("SELECT version FROM csl_ops.schema_migrations")]
        assert 999 not in versions and 1 in versions


def test_an_applied_migration_that_changed_is_refused(fresh_database, tmp_path):
    root = _copy_sql(tmp_path)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, root=root)
        first = min((root / "csl_ops").glob("0001_*.sql"))
        first.write_text(first.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(DatabaseError, match="changed after it was applied"):
            migrate(conn, root=root)


def test_badly_named_migration_file_is_refused(fresh_database, tmp_path):
    root = _copy_sql(tmp_path)
    (root / "csl_ops" / "2_add_things.sql").write_text("SELECT 1;")
    with psycopg.connect(fresh_database, autocommit=True) as conn, pytest.raises(DatabaseError, match="NNNN_name.sql"):
        migrate(conn, root=root)


def test_a_migration_never_queues_behind_a_long_transaction(fresh_database, tmp_path):
    """ALTER TABLE waits for every open transaction on the table, and every query behind it waits
    too: a migration gives up after its lock_timeout instead, with nothing of it applied."""
    import time

    root = _copy_sql(tmp_path)
    (root / "csl_ops" / "0999_alter.sql").write_text("ALTER TABLE csl_ops.task_runs ADD COLUMN note text;\n")
    with psycopg.connect(fresh_database, autocommit=True) as conn, psycopg.connect(fresh_database) as reader:
        migrate(conn, root=_copy_sql(tmp_path / "first"))
        reader.execute("SELECT count(*) FROM csl_ops.task_runs")  # an open transaction holding a lock on it
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="0999_alter.sql: a lock was not granted within 1 s"):
            migrate(conn, root=root, lock_timeout_s=1)
        assert time.monotonic() - started < 10
        assert 999 not in [r[0] for r in conn.execute("SELECT version FROM csl_ops.schema_migrations")]
        reader.rollback()
        assert migrate(conn, root=root)[-1]["version"] == 999  # once that transaction is done
