"""csl.reports against the real primary (pg_stat_statements preloaded, hypopg in template1):
snapshots, deltas across resets, top queries, regressions, index findings, HypoPG advice,
the files and the stored report."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import time

import psycopg
import pytest

from csl import reports
from csl.reports import ReportParams, ReportParamsError, parse_window

PROBE_ROWS = 200_000
PROBE_QUERY = "SELECT count(*), sum(seconds) FROM listening_sessions WHERE listener_id = %s"


@pytest.fixture
def perf_db(platform_db):
    """The platform database plus ``listening_sessions``: 200k rows, no index on listener_id."""
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE listening_sessions (
                id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                listener_id integer NOT NULL,
                track_id    integer NOT NULL,
                played_at   timestamptz NOT NULL,
                seconds     integer NOT NULL)""")
        conn.execute("""
            INSERT INTO listening_sessions (listener_id, track_id, played_at, seconds)
            SELECT g %% 5000, g %% 977, timestamptz '2026-01-01' + g * interval '1 minute', g %% 300
            FROM generate_series(1, %s) g""", (PROBE_ROWS,))
        conn.execute("VACUUM ANALYZE listening_sessions")
    return platform_db


def workload(url: str, calls: int = 40, *, offset: int = 0) -> None:
    """The platform's slow query, ``calls`` times, on its own connection (closed: stats flushed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(calls):
            conn.execute(PROBE_QUERY, (offset + n * 7,))


def probe(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["query"].startswith("SELECT count(*), sum(seconds) FROM listening_sessions")),
                None)


def numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("queryid",)}


def test_slow_seq_scan_is_a_top_query_and_hypopg_advice_names_the_index_until_it_is_built(perf_db, tmp_path):
    workload(perf_db)
    with psycopg.connect(perf_db, autocommit=True) as conn:
        first = reports.make_report(conn, ReportParams(window="1h"), run_key="t-advice-1", out_dir=tmp_path)
        report = first.report
        top = probe(report["tables"]["top_queries_total_time"])
        assert top is not None and top["calls"] == 40 and top["mean_ms"] > 0
        assert "$1" in top["query"]

        advice = probe(report["tables"]["index_advice"])
        assert advice["suggested"], advice
        assert (advice["schema_name"], advice["table_name"], advice["columns"]) == \
            ("public", "listening_sessions", ["listener_id"])
        assert advice["cost_drop_pct"] >= 50
        assert advice["cost_after"] < advice["cost_before"] / 2
        assert advice["statement"] == ('CREATE INDEX CONCURRENTLY "listening_sessions_listener_id_idx" '
                                       'ON "public"."listening_sessions" ("listener_id")')
        missing = [r for r in report["recommendations"] if r["kind"] == "missing_index"]
        assert [r["statement"] for r in missing] == [advice["statement"]]
        assert missing[0]["evidence"]["cost_before"] == advice["cost_before"]
        assert missing[0]["evidence"]["calls"] == 40

        conn.execute(advice["statement"])  # the advice, taken
        conn.execute("ANALYZE listening_sessions")
        workload(perf_db, offset=3)
        second = reports.make_report(conn, ReportParams(window="1h"), run_key="t-advice-2")
        after = probe(second.report["tables"]["index_advice"])
        assert after is not None and not after["suggested"], after  # still slow in the window, but indexed now
        assert "listening_sessions_listener_id_idx" in (after["plan_before"] or "")
        assert not [r for r in second.report["recommendations"] if r["kind"] == "missing_index"]
        # the first report's own work (snapshots, EXPLAINs of this very query) is not reported as workload
        assert probe(second.report["tables"]["top_queries_total_time"])["calls"] == 40
        assert not [q for q in second.report["tables"]["top_queries_total_time"]
                    if "csl:perf-report" in q["query"] or "csl_ops.perf_" in q["query"]]


def test_dropping_an_index_between_windows_is_flagged_as_a_regression(perf_db):
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX listening_sessions_listener_idx ON listening_sessions (listener_id)")
        reports.capture(conn)
        workload(perf_db, calls=40)
        time.sleep(1)  # keeps the two windows' snapshots apart
        base = reports.capture(conn)
        conn.execute("DROP INDEX listening_sessions_listener_idx")
        workload(perf_db, calls=40, offset=1)
        time.sleep(1)
        since_base = conn.execute("SELECT now() - %s", (base.taken_at,)).fetchone()[0]
        params = ReportParams(window=since_base + dt.timedelta(milliseconds=500), regression_pct=100, min_calls=30)
        report = reports.analyse(conn, params, advise_with_hypopg=False)
    assert report["meta"]["baseline_snapshot_id"] == base.id
    regression = probe(report["tables"]["regressions"])
    assert regression is not None, report["tables"]["regressions"]
    assert regression["calls_before"] == 40 and regression["calls_now"] == 40
    assert regression["mean_ms_now"] > 2 * regression["mean_ms_before"]
    assert regression["change_pct"] >= 100
    recs = [r for r in report["recommendations"] if r["kind"] == "regression"]
    assert any(str(regression["queryid"]) in r["target"] and r["evidence"]["change_pct"] == regression["change_pct"]
               for r in recs)


def test_a_statistics_reset_between_snapshots_never_gives_negative_figures(perf_db, stack):
    workload(perf_db, calls=60)
    name = perf_db.rsplit("/", 1)[1]
    with psycopg.connect(perf_db, autocommit=True) as conn:
        before = reports.capture(conn)
        stack.psql("SELECT pg_stat_statements_reset()", db=name)
        stack.psql("SELECT pg_stat_reset()", db=name)
        workload(perf_db, calls=5, offset=2)
        report = reports.analyse(conn, ReportParams(window="1h"), advise_with_hypopg=False)
    assert report["meta"]["baseline_snapshot_id"] == before.id
    top = probe(report["tables"]["top_queries_total_time"])
    assert top["calls"] == 5  # counted from the reset, not 5 - 60
    assert any("reset" in note for note in report["meta"]["notes"])
    for name_, rows in report["tables"].items():
        if name_.startswith("top_queries") or name_ in ("tables", "cache_hit_ratio", "unused_indexes"):
            for row in rows:
                negative = {k: v for k, v in numbers(row).items() if v < 0 and k != "growth_bytes"}
                assert not negative, (name_, row)
    sessions = next(t for t in report["tables"]["tables"] if t["table"] == "public.listening_sessions")
    assert sessions["seq_scans"] >= 0 and sessions["idx_scans"] >= 0


def test_one_deallocated_entry_counts_from_zero_without_a_global_reset(perf_db, stack):
    workload(perf_db, calls=30)
    name = perf_db.rsplit("/", 1)[1]
    with psycopg.connect(perf_db, autocommit=True) as conn:
        reports.capture(conn)
        queryid = conn.execute("SELECT queryid FROM pg_stat_statements WHERE query LIKE %s AND dbid = "
                               "(SELECT oid FROM pg_database WHERE datname = current_database())",
                               ("%listening_sessions WHERE listener_id%",)).fetchone()[0]
        stack.psql(f"SELECT pg_stat_statements_reset(0, 0, {int(queryid)})", db=name)  # counters go down
        workload(perf_db, calls=4, offset=5)
        report = reports.analyse(conn, ReportParams(window="1h"), advise_with_hypopg=False)
    top = probe(report["tables"]["top_queries_total_time"])
    assert top["calls"] == 4 and top["total_ms"] > 0


def test_unused_duplicate_and_invalid_indexes_are_found_and_keys_never_are(perf_db):
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX ls_track_idx ON listening_sessions (track_id)")
        conn.execute("CREATE INDEX ls_listener_idx ON listening_sessions (listener_id)")
        conn.execute("CREATE INDEX ls_listener_played_idx ON listening_sessions (listener_id, played_at)")
        conn.execute("ALTER TABLE listening_sessions ADD CONSTRAINT ls_id_listener_key UNIQUE (id, listener_id)")
        with pytest.raises(psycopg.errors.UniqueViolation):  # a failed concurrent build leaves an INVALID index
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ls_broken_idx ON listening_sessions (track_id)")
        reports.capture(conn)
        workload(perf_db, calls=10)  # scans the listener indexes, never ls_track_idx
        report = reports.analyse(conn, ReportParams(window="1h"), advise_with_hypopg=False)
    unused = {u["index"] for u in report["tables"]["unused_indexes"]}
    duplicates = {d["index"]: d["covered_by"] for d in report["tables"]["duplicate_indexes"]}
    invalid = {i["index"] for i in report["tables"]["invalid_indexes"]}
    assert "public.ls_track_idx" in unused
    assert duplicates.get("public.ls_listener_idx") == "public.ls_listener_played_idx"
    assert invalid == {"public.ls_broken_idx"}
    protected = {"public.listening_sessions_pkey", "public.ls_id_listener_key"}
    with psycopg.connect(perf_db) as conn:  # every PK/unique/constraint index in the database, not just ours
        protected |= {r[0] for r in conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE i.indisprimary OR i.indisunique AND i.indisvalid"
            " OR EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid)").fetchall()}
    assert not protected & unused and not protected & set(duplicates)
    targets = {r["target"] for r in report["recommendations"] if r["kind"] in ("unused_index", "duplicate_index")}
    assert not protected & targets
    drop = next(r for r in report["recommendations"] if r["kind"] == "duplicate_index")
    assert drop["statement"] == 'DROP INDEX CONCURRENTLY "public"."ls_listener_idx"'
    broken = next(r for r in report["recommendations"] if r["kind"] == "invalid_index")
    assert broken["target"] == "public.ls_broken_idx"
    assert broken["statement"] == 'DROP INDEX CONCURRENTLY "public"."ls_broken_idx"'  # unique: a rebuild fails again


def test_first_report_says_there_is_no_older_snapshot_and_writes_every_output(perf_db, tmp_path):
    workload(perf_db, calls=12)
    with psycopg.connect(perf_db, autocommit=True) as conn:
        result = reports.make_report(conn, ReportParams(window="24h"), run_key="t-files", out_dir=tmp_path)
        stored = reports.stored_report(conn, run_key="t-files")
        stats_reset = conn.execute("SELECT stats_reset FROM pg_stat_statements_info").fetchone()[0]
    meta = result.meta
    assert meta["baseline_snapshot_id"] is None and meta["window_start"] == stats_reset
    assert any(note.startswith("No older snapshot in the 24h window") and "statistics reset" in note
               for note in meta["notes"])

    folder = tmp_path / "t-files"
    page = (folder / "index.html").read_text()
    assert "<svg" in page and 'data-table="top_queries_total_time"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything from outside"
    assert "<script" not in page
    tables = result.report["tables"]
    for name, rows in tables.items():
        with (folder / f"{name}.csv").open(newline="") as f:
            assert len(list(csv.reader(f))) == (len(rows) + 1 if rows else 0), name
    data = json.loads((folder / "report.json").read_text())
    assert data["summary"]["queries"] == result.summary["queries"] > 0
    assert stored["html"] == page and stored["data"]["tables"]["top_queries_total_time"]

    frames = reports.to_frames(result.report)
    assert set(frames) == set(tables)
    top = frames["top_queries_total_time"]
    assert len(top) == len(tables["top_queries_total_time"]) and top["total_ms"].is_monotonic_decreasing


def test_retention_removes_old_snapshots_with_their_rows(perf_db):
    with psycopg.connect(perf_db, autocommit=True) as conn:
        old, new = reports.capture(conn), reports.capture(conn)
        conn.execute("UPDATE csl_ops.perf_snapshots SET taken_at = now() - interval '40 days' WHERE id = %s", (old.id,))
        assert reports.prune(conn, retention_days=30) == 1
        left = conn.execute("SELECT count(*) FROM csl_ops.perf_snapshot_tables WHERE snapshot_id = %s",
                            (old.id,)).fetchone()[0]
        kept = conn.execute("SELECT count(*) FROM csl_ops.perf_snapshots WHERE id = %s", (new.id,)).fetchone()[0]
    assert (left, kept) == (0, 1)


@pytest.mark.parametrize(("field", "value"), [("regression_pct", 0), ("min_calls", 0), ("min_cost_drop_pct", 101),
                                               ("top", "ten"), ("window", "yesterday"), ("window", "0m"),
                                               ("exact_bloat_tables", ("users; drop",))])
def test_bad_report_params_are_refused_naming_the_param(field, value):
    with pytest.raises(ReportParamsError, match=field):
        ReportParams(**{field: value})


def test_window_parsing():
    assert parse_window("90m") == dt.timedelta(minutes=90)
    assert parse_window("24h") == parse_window(24) == dt.timedelta(days=1)
    assert parse_window("7d") == dt.timedelta(days=7)


def _cli(settings_url: str, argv: list[str], capsys, *, replica_url: str | None = None):
    from csl.config import DatabaseSettings, Settings
    from csl.reports.cli import add_cli

    parser = argparse.ArgumentParser(prog="csl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    code = args.func(args, Settings(database=DatabaseSettings(primary_url=settings_url, replica_url=replica_url)))
    return code, capsys.readouterr().out


def test_cli_snapshot_and_report(perf_db, tmp_path, capsys):
    code, out = _cli(perf_db, ["snapshot", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["snapshot"]["rows_written"] > 10
    workload(perf_db, calls=8)
    code, out = _cli(perf_db, ["report", "--window", "2h", "--out", str(tmp_path), "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["meta"]["baseline_snapshot_id"] is not None
    assert (tmp_path / reports.safe_name(body["run_key"]) / "index.html").is_file()
    code, out = _cli(perf_db, ["report", "--window", "2h", "--out", str(tmp_path)], capsys)
    assert code == 0 and "recommendations" in out and str(tmp_path) in out


def test_cli_refuses_a_bad_window(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli("postgresql://unused/x", ["report", "--window", "soon"], capsys)
    assert exit_info.value.code == 2
