"""Which storage objects the platform's rows refer to: one definition for the integrity sweep
(an unreferenced object is an ``orphan``) and the cleanup (a referenced object never moves).

``REFERENCE_COLUMNS`` lists every (table, column) that holds an object key — sample audio,
generation results, avatars (images are an upload kind too). Values may be keys or URLs; the
normalisation to keys lives in ``include/sql/storage/references.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg import sql

from csl.sqlfiles import load

__all__ = ["REFERENCE_COLUMNS", "SIZE_COLUMNS", "referenced_keys", "references_query"]

REFERENCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("audio_samples", "file_url"),
    ("generations", "result_url"),
    ("users", "avatar_url"),
)
SIZE_COLUMNS = {("audio_samples", "file_url"): "file_size"}  # the database knows these objects' sizes


def references_query(columns: Sequence[tuple[str, str]] = REFERENCE_COLUMNS, *,
                     only_where: str | None = None) -> sql.Composed:
    """``SELECT key, size, source`` over every reference column (parameter ``buckets``);
    ``only_where`` names a boolean column the rows must have true (e.g. ``approved``)."""
    if not columns:
        raise ValueError("at least one reference column is needed")
    parts = []
    for table, column in columns:
        size = SIZE_COLUMNS.get((table, column))
        parts.append(sql.SQL("SELECT {col}::text, {size}::bigint, {source} FROM {table} "
                             "WHERE {col} IS NOT NULL AND {col} <> ''{only}").format(
            col=sql.Identifier(column), size=sql.Identifier(size) if size else sql.SQL("NULL"),
            source=sql.Literal(f"{table}.{column}"), table=sql.Identifier(*table.split(".")),
            only=sql.SQL(" AND {} IS TRUE").format(sql.Identifier(only_where)) if only_where else sql.SQL("")))
    return sql.SQL(load("storage/references.sql")).format(raw=sql.SQL(" UNION ALL ").join(parts))


def referenced_keys(conn: psycopg.Connection, keys: Iterable[str], *, buckets: Sequence[str],
                    columns: Sequence[tuple[str, str]] = REFERENCE_COLUMNS) -> set[str]:
    """The ``keys`` that some row refers to, in one set-based pass over the reference columns
    (the keys are COPYed into a temporary table, then joined)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE csl_candidate_keys (key text PRIMARY KEY) ON COMMIT DROP")
        with cur.copy("COPY csl_candidate_keys (key) FROM STDIN") as copy:
            for key in set(keys):
                copy.write_row((key,))
        cur.execute(sql.SQL("SELECT DISTINCT r.key FROM ({refs}) AS r JOIN csl_candidate_keys c ON c.key = r.key")
                    .format(refs=references_query(columns)), {"buckets": list(buckets)})
        return {row[0] for row in cur}
