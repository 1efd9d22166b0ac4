"""The performance report against hostile texts and partial evidence, on the real primary and its
streaming hot standby (issue 12, items 13, 14 and 17):

- query texts planted in pg_stat_statements by a login that may only SELECT one table never make
  the report write: the advisor parses one statement (extended protocol), in a READ ONLY
  transaction, as ``csl_advisor`` — or gives no advice at all;
- session texts are shown without their literals, statements that carry passwords are neither
  stored nor shown, CSV cells cannot run as formulas, stored reports have a retention and the
  migration cleans what was stored before;
- "unused" means no scan on the primary *and* on the replica over the observation period, an
  unreadable replica makes it unknown, and an index of the declared catalog is never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from csl import reports
from csl.maintenance.indexes import load_catalog
from csl.reports import ReportParams
from csl.reports.advice import advise

from . import test_reports
from .test_reports import _cli, workload

perf_db = test_reports.perf_db  # the same fixture: 200k listening sessions, no index on listener_id

SENTINEL = "untouched"


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _writes_to_sentinel(conn: psycopg.Connection) -> int:
    """Executions of any INSERT/UPDATE/DELETE of csl_sentinel that pg_stat_statements saw, by anyone."""
    return conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        r" AND query ~* '^\s*(update|insert|delete)\s' AND query ILIKE '%csl_sentinel%'").fetchone()[0]


@pytest.fixture
def sentinel_db(perf_db, stack):
    """perf_db plus a sentinel row owned by csl, and pg_stat_statements of this database emptied."""
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE csl_sentinel (id int PRIMARY KEY, v text NOT NULL, hits int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO csl_sentinel (id, v) VALUES (1, %s)", (SENTINEL,))
    stack.psql("SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
               db=_dbname(perf_db))
    return perf_db


@pytest.fixture
def outsider(sentinel_db, stack):
    """A login that may only SELECT listening_sessions: anyone the platform gives a read login."""
    name = f"csl_t_{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(18)
    stack.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    stack.psql(f"GRANT SELECT ON listening_sessions TO {name}", db=_dbname(sentinel_db))
    try:
        yield name, _with_login(sentinel_db, name, password)
    finally:
        stack.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        stack.psql(f"DROP OWNED BY {name}", db=_dbname(sentinel_db))
        stack.psql(f"DROP ROLE IF EXISTS {name}")


# Each is ONE statement to PostgreSQL (block comments nest: everything up to the last */ is a
# comment); a comment stripper that does not nest sees `SELECT 1; UPDATE …; COMMIT; …`.
PAYLOADS = [
    ("/* a /* b */ SELECT 1; UPDATE csl_sentinel SET v = 'owned-1'; COMMIT; -- */\n"
     "SELECT count(*), min(seconds) FROM listening_sessions WHERE listener_id = 101"),
    ("/* a /* b */ SELECT 2; DO $$BEGIN UPDATE csl_sentinel SET v = 'owned-2', hits = hits + 1; END$$; COMMIT; -- */\n"
     "SELECT count(*), max(track_id) FROM listening_sessions WHERE listener_id = 102"),
    ("/* a /* b /* c */ SELECT 3; DELETE FROM csl_sentinel; COMMIT; -- */ */\n"
     "SELECT sum(seconds) FROM listening_sessions WHERE listener_id = 103"),
]


def test_texts_planted_in_pg_stat_statements_by_a_read_only_login_never_write_as_the_owner(sentinel_db, outsider,
                                                                                          tmp_path):
    _, outsider_url = outsider
    with psycopg.connect(outsider_url, autocommit=True) as attacker:
        for payload in PAYLOADS:
            for _ in range(3):
                attacker.execute(payload)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute("UPDATE csl_sentinel SET v = 'direct'")  # the login itself cannot write
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        planted = conn.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE '/*%csl_sentinel%'"
                               " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                               ).fetchone()[0]
        assert planted == len(PAYLOADS)  # the texts the report reads back
        result = reports.make_report(conn, ReportParams(window="1h"), run_key="t-hostile", out_dir=tmp_path)
        assert conn.execute("SELECT v, hits FROM csl_sentinel").fetchall() == [(SENTINEL, 0)]
        assert _writes_to_sentinel(conn) == 0
    advice = result.report["tables"]["index_advice"]
    planted_rows = [a for a in advice if "listening_sessions WHERE listener_id" in a["query"]
                    and a["query"].startswith("/*…*/")]
    assert len(planted_rows) == len(PAYLOADS), [(a["query"][:90], a["reason"]) for a in advice]
    for row in planted_rows:  # planned as the one SELECT PostgreSQL sees: costed like any other query
        assert row["cost_before"] and row["suggested"], row
        assert "csl_sentinel" not in row["query"] and "owned" not in row["query"]
    page = (tmp_path / "t-hostile" / "index.html").read_text()
    assert "owned" not in page and "UPDATE csl_sentinel" not in page  # comments are not shown either


@pytest.fixture
def planner_functions(sentinel_db):
    """Functions the planner itself runs (IMMUTABLE: folded while a plan is made): one that writes
    through a volatile helper, one that says whom and how it was planned by."""
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        conn.execute("""
            CREATE FUNCTION csl_test_write() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
            BEGIN UPDATE csl_sentinel SET v = 'owned-by-planner', hits = hits + 1; RETURN 1; END $$;
            CREATE FUNCTION csl_test_fold() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN PERFORM csl_test_write(); RETURN 1; END $$;
            CREATE FUNCTION csl_test_whoami() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN RAISE EXCEPTION 'planned as % (read only: %)', current_user, current_setting('transaction_read_only');
            END $$""")
    return sentinel_db


def test_a_text_is_one_statement_planned_read_only_as_the_advisor_role(planner_functions):
    texts = {
        "two statements": "SELECT 1; TRUNCATE csl_sentinel",  # no write word the lexer knows: the protocol refuses
        "write at plan time": "SELECT count(*) FROM listening_sessions WHERE listener_id = csl_test_fold()",
        "who plans": "SELECT count(*) FROM listening_sessions WHERE listener_id = csl_test_whoami()",
        "data-modifying WITH": "WITH d AS (UPDATE csl_sentinel SET hits = hits + 1 RETURNING id) SELECT count(*) FROM d",
        "update": "UPDATE listening_sessions SET seconds = $1 WHERE listener_id = $2",
        "locking read": "SELECT * FROM listening_sessions WHERE listener_id = $1 FOR UPDATE",
        "plain read": "SELECT count(*) FROM listening_sessions WHERE listener_id = $1",
    }
    with psycopg.connect(planner_functions, autocommit=True) as conn:
        found = {name: a for name, a in zip(texts, advise(
            conn, [{"queryid": n, "query": t} for n, t in enumerate(texts.values())]))}
        assert conn.execute("SELECT v, hits FROM csl_sentinel").fetchall() == [(SENTINEL, 0)]
        assert _writes_to_sentinel(conn) == 0
        assert conn.execute("SELECT current_user").fetchone()[0] == "csl"  # the role is back after each plan
    assert "cannot insert multiple commands into a prepared statement" in found["two statements"].reason
    assert "read-only transaction" in found["write at plan time"].reason
    assert "planned as csl_advisor (read only: on)" in found["who plans"].reason
    assert found["data-modifying WITH"].reason == "not costed: write statement"
    assert found["update"].reason == "not costed: write statement"
    assert found["locking read"].reason.startswith("not costed: locking read")
    plain = found["plain read"]
    assert plain.suggested and plain.columns == ["listener_id"] and plain.cost_after < plain.cost_before


@pytest.fixture
def roles(stack, sentinel_db):
    """Make throwaway roles (cluster-wide); all dropped afterwards."""
    made: list[str] = []

    def make(sql_template: str) -> str:
        name = f"csl_t_{uuid.uuid4().hex[:10]}"
        stack.psql(sql_template.format(name=name), db=_dbname(sentinel_db))
        made.append(name)
        return name

    yield make
    for name in made:
        stack.psql(f"DROP OWNED BY {name}", db=_dbname(sentinel_db))
        stack.psql(f"DROP ROLE IF EXISTS {name}")


def test_no_usable_advisor_role_means_no_advice_never_the_owner(sentinel_db, roles):
    workload(sentinel_db, calls=10)
    outside = roles("CREATE ROLE {name} NOLOGIN; GRANT pg_read_all_data TO {name}")  # csl is not a member
    writer = roles("CREATE ROLE {name} NOLOGIN; GRANT {name} TO csl; GRANT INSERT ON csl_sentinel TO {name}")
    cases = {"csl_t_missing_role": "does not exist", outside: "csl is not a member",
             writer: "can write public.csl_sentinel"}
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        for role, why in cases.items():
            report = reports.analyse(conn, ReportParams(window="1h", advisor_role=role))
            assert report["tables"]["index_advice"] == [], role
            assert report["summary"]["missing_index_advice"] == 0
            note = next(n for n in report["meta"]["notes"] if n.startswith("Missing-index advice skipped"))
            assert why in note and role in note, note
        with pytest.raises(reports.ReportParamsError, match="advisor_role"):
            ReportParams(advisor_role='x"; DROP TABLE csl_sentinel; --')


# -- 14: secrets and personal data --------------------------------------------------------------

SECRETS = ["alice@example.org", "4242424242424242", "hunter2"]  # every password below ends in hunter2


def _idle_in_transaction(url: str, *statements: str, application_name: str = "csl-test") -> psycopg.Connection:
    conn = psycopg.connect(url, application_name=application_name)
    for statement in statements:
        conn.execute(statement)
    return conn  # left idle in transaction: its last text stays in pg_stat_activity


def test_reports_show_no_literals_and_no_statement_that_carries_a_password(sentinel_db, outsider, roles, stack,
                                                                          tmp_path):
    _, outsider_url = outsider
    db = _dbname(sentinel_db)
    other = roles("CREATE ROLE {name} NOLOGIN")
    stack.psql(f"ALTER ROLE {other} PASSWORD 'pgss-hunter2'", db=db)  # kept verbatim by pg_stat_statements
    stack.psql("CREATE FOREIGN DATA WRAPPER csl_t_fdw; CREATE SERVER csl_t_server FOREIGN DATA WRAPPER csl_t_fdw;"
               " CREATE USER MAPPING FOR csl SERVER csl_t_server OPTIONS (user 'u', password 'fdw-hunter2')", db=db)
    personal = _idle_in_transaction(
        sentinel_db, "SELECT 'alice@example.org' AS email, 4242424242424242 AS card, $$dollar-hunter2$$ AS note,"
                     " E'escaped\\'-hunter2' AS esc, B'1010' AS bits, X'FF' AS hex, $q$ $$ $q$ AS nested")
    dsn = _idle_in_transaction(sentinel_db, "SELECT 'postgresql://u:url-hunter2@h/db' AS dsn")
    password = _idle_in_transaction(outsider_url, "ALTER ROLE CURRENT_USER PASSWORD 'session-hunter2'")
    try:
        time.sleep(1.5)
        with psycopg.connect(sentinel_db, autocommit=True) as conn:
            result = reports.make_report(conn, ReportParams(window="1h", idle_in_xact_s=1), run_key="t-secrets",
                                         out_dir=tmp_path)
            stored = conn.execute("SELECT html, data::text FROM csl_ops.perf_reports WHERE run_key = 't-secrets'"
                                  ).fetchone()
            texts = [r[0] for r in conn.execute("SELECT query FROM csl_ops.perf_queries")]
        pids = {c.info.backend_pid: name for c, name in ((personal, "personal"), (dsn, "dsn"), (password, "password"))}
    finally:
        for c in (personal, dsn, password):
            c.close()
    sessions = {pids[s["pid"]]: s["query"] for s in result.report["tables"]["sessions"] if s["pid"] in pids}
    assert sessions == {
        "personal": "SELECT ? AS email, ? AS card, ? AS note, ? AS esc, ? AS bits, ? AS hex, ? AS nested",
        "dsn": "SELECT … (redacted: may carry a secret)",  # a URL with a password: not even without literals
        "password": "ALTER ROLE … (redacted: may carry a secret)"}
    assert "ALTER ROLE … (redacted: may carry a secret)" in texts  # captured, but only its command words
    assert "CREATE USER … (redacted: may carry a secret)" in texts
    folder = tmp_path / "t-secrets"
    outputs = {"stored html": stored[0], "stored data": stored[1], "perf_queries": "\n".join(texts),
               **{f.name: f.read_text() for f in folder.iterdir()}}
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, (secret, where)


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(sentinel_db, tmp_path):
    formulas = ['=HYPERLINK("http://evil.example","x")', "+1+2", "-3+4", "@SUM(1)", "\tcmd", "\rcmd"]
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        for f in formulas:  # names a database user may choose: schemas, tables, application_name
            schema = psycopg.sql.Identifier(f)
            conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}; CREATE TABLE {}.t (id int)").format(schema, schema))
        idle = [_idle_in_transaction(sentinel_db, "SELECT 1", application_name=f) for f in formulas[:4]]
        try:
            time.sleep(1.5)
            result = reports.make_report(conn, ReportParams(window="1h", idle_in_xact_s=1), run_key="t-csv",
                                         out_dir=tmp_path)
        finally:
            for c in idle:
                c.close()
    folder = tmp_path / "t-csv"
    with (folder / "sessions.csv").open(newline="") as f:
        names = [row["application_name"] for row in csv.DictReader(f)]
    assert sorted(n for n in names if n[1:] in formulas) == sorted("'" + f for f in formulas[:4]), names
    with (folder / "tables.csv").open(newline="") as f:
        cells = [row["table"] for row in csv.DictReader(f)]
    assert sorted(c for c in cells if c.endswith(".t")) == sorted(f"'{f}.t" for f in formulas), cells
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    data = result.report["tables"]["sessions"]
    assert any(s["application_name"] == formulas[0] for s in data)  # the report's data itself is unchanged
    served = reports.render.table_csv([{"key": "-1+1", "n": -5}])
    assert list(csv.reader(io.StringIO(served))) == [["key", "n"], ["'-1+1", "-5"]]


def _age_files(folder: Path, days: float) -> None:
    old = time.time() - days * 86400
    for f in folder.iterdir():
        os.utime(f, (old, old))


def test_stored_reports_and_their_folders_are_kept_for_the_retention_only(sentinel_db, tmp_path, capsys):
    out = tmp_path / "reports"
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        for key in ("t-old", "t-new"):
            reports.make_report(conn, ReportParams(window="1h"), run_key=key, out_dir=out, advise_with_hypopg=False)
        conn.execute("UPDATE csl_ops.perf_reports SET created_at = now() - interval '100 days' WHERE run_key = 't-old'")
        shutil.copytree(out / "t-new", out / "orphan")  # a report folder the database does not know
        _age_files(out / "orphan", 100)
        (out / "keep-me").mkdir()  # an old folder that is not only a report: never removed
        shutil.copy(out / "t-new" / "index.html", out / "keep-me")
        shutil.copy(out / "t-new" / "report.json", out / "keep-me")
        (out / "keep-me" / "notes.txt").write_text("mine")
        _age_files(out / "keep-me", 100)
        conn.execute("INSERT INTO csl_ops.perf_report_purges (path, reason) VALUES (%s, 'test')", (str(tmp_path),))
    code, text = _cli(sentinel_db, ["snapshot", "--report-retention-days", "90", "--out", str(out), "--json"], capsys)
    assert code == 0 and json.loads(text)["reports_pruned"] == {"reports": 1, "folders": 2}
    with psycopg.connect(sentinel_db, autocommit=True) as conn:
        keys = [r[0] for r in conn.execute("SELECT run_key FROM csl_ops.perf_reports ORDER BY run_key")]
        queued = conn.execute("SELECT count(*) FROM csl_ops.perf_report_purges").fetchone()[0]
    assert keys == ["t-new"] and queued == 0
    assert sorted(p.name for p in out.iterdir()) == ["keep-me", "t-new"]
    assert (tmp_path / "reports").is_dir()  # the hostile queued path was left alone
    with psycopg.connect(sentinel_db, autocommit=True) as conn, pytest.raises(reports.ReportParamsError,
                                                                               match="retention_days"):
        reports.prune_reports(conn, retention_days=0)


def test_migration_0013_cleans_what_was_stored_before_it(fresh_database, tmp_path):
    from csl.migrations import migrate
    from csl.sqlfiles import sql_dir

    before = tmp_path / "sql"
    shutil.copytree(sql_dir() / "platform", before / "platform")
    (before / "csl_ops").mkdir()
    for f in sorted((sql_dir() / "csl_ops").glob("*.sql")):
        if int(f.name[:4]) < 13:
            shutil.copy(f, before / "csl_ops")
    folders = {}
    for key in ("clean", "sessions", "secret"):
        folders[key] = tmp_path / "out" / key
        folders[key].mkdir(parents=True)
        (folders[key] / "index.html").write_text("<p>report</p>")
        (folders[key] / "report.json").write_text("{}")
    tables = {"clean": {"sessions": [], "top_queries_total_time": [{"query": "SELECT * FROM t WHERE id = $1"}]},
              "sessions": {"sessions": [{"pid": 1, "query": "SELECT * FROM users WHERE email = 'bob@example.org'"}]},
              "secret": {"top_queries_calls": [{"query": "ALTER ROLE bob PASSWORD 'old-hunter2'"}]}}
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"), root=before)
        conn.execute("INSERT INTO csl_ops.perf_queries (queryid, query) VALUES (1, %s), (2, %s)",
                     ("ALTER ROLE bob PASSWORD 'old-hunter2'", "SELECT * FROM t WHERE id = $1"))
        for key, data in tables.items():
            conn.execute("INSERT INTO csl_ops.perf_reports (run_key, window_start, window_end, data, html, path)"
                         " VALUES (%s, now(), now(), %s, 'page', %s)",
                         (key, json.dumps({"tables": data}), str(folders[key])))
        migrate(conn, components=("platform", "csl_ops"))
        texts = dict(conn.execute("SELECT queryid, query FROM csl_ops.perf_queries").fetchall())
        kept = [r[0] for r in conn.execute("SELECT run_key FROM csl_ops.perf_reports")]
        queued = sorted(r[0] for r in conn.execute("SELECT path FROM csl_ops.perf_report_purges"))
        assert reports.prune_reports(conn, out_dir=tmp_path / "out") == {"reports": 0, "folders": 2}
    assert texts == {1: "ALTER ROLE … (redacted: may carry a secret)", 2: "SELECT * FROM t WHERE id = $1"}
    assert kept == ["clean"]
    assert queued == sorted([str(folders["secret"]), str(folders["sessions"])])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clean"]


# -- 17: unused-index advice -----------------------------------------------------------------------

@pytest.fixture
def replica_url(perf_db, settings):
    """The test database on the streaming hot standby, once the standby has replayed it so far."""
    url = settings.require_database().replica_url.rsplit("/", 1)[0] + "/" + _dbname(perf_db)
    wait_replayed(perf_db, url)
    return url


def wait_replayed(primary_url: str, replica_url: str, timeout: float = 30.0) -> None:
    with psycopg.connect(primary_url, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(replica_url, autocommit=True) as conn:
                if conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass  # the database itself is not on the standby yet
        if time.monotonic() > deadline:
            raise AssertionError(f"the standby did not replay {lsn} in {timeout:g} s")
        time.sleep(0.2)


def scan_on_replica(replica_url: str, index: str, query: str, times: int = 5) -> None:
    """Run ``query`` on the standby through ``index`` and wait until the standby counts the scans."""
    with psycopg.connect(replica_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        for n in range(times):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, (n,)))
            assert index in plan, plan
            conn.execute(query, (n,))
    deadline = time.monotonic() + 15
    with psycopg.connect(replica_url, autocommit=True) as conn:
        while conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (index,)
                           ).fetchone()[0] < times:
            assert time.monotonic() < deadline, "the standby never counted the scans"
            time.sleep(0.2)
            conn.execute("SELECT pg_stat_clear_snapshot()")


def _age_snapshots(conn: psycopg.Connection, days: int) -> None:
    conn.execute("UPDATE csl_ops.perf_snapshots SET taken_at = taken_at - make_interval(days => %s)", (days,))


def _drops(report: dict, index: str) -> list[dict]:
    return [r for r in report["recommendations"] if (r["statement"] or "").startswith("DROP INDEX")
            and index in r["statement"]]


def _recs(report_or_payload: dict, kind: str) -> dict[str, dict]:
    return {r["target"]: r for r in report_or_payload["recommendations"] if r["kind"] == kind}


def test_an_index_used_only_on_the_replica_is_not_unused(perf_db, replica_url, capsys, tmp_path):
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX ls_track_idx ON listening_sessions (track_id)")   # read through the replica
        conn.execute("CREATE INDEX ls_played_idx ON listening_sessions (played_at)")  # read nowhere
    wait_replayed(perf_db, replica_url)
    code, out = _cli(perf_db, ["snapshot", "--out", str(tmp_path), "--json"], capsys, replica_url=replica_url)
    first = json.loads(out)["snapshot"]
    assert code == 0
    with psycopg.connect(perf_db, autocommit=True) as conn:
        _age_snapshots(conn, 8)  # the first snapshot: eight days of statistics ago
    scan_on_replica(replica_url, "ls_track_idx", "SELECT count(*) FROM listening_sessions WHERE track_id = %s")
    code, out = _cli(perf_db, ["report", "--window", "24h", "--no-hypopg", "--out", str(tmp_path), "--json"], capsys,
                     replica_url=replica_url)
    assert code == 0
    payload = json.loads(out)
    unused = _recs(payload, "unused_index")
    assert "public.ls_track_idx" not in unused  # 0 scans on the primary, 5 on the replica: used
    dropped = unused["public.ls_played_idx"]
    assert dropped["statement"] == 'DROP INDEX CONCURRENTLY "public"."ls_played_idx"'
    assert "the primary or the replica for" in dropped["message"] and dropped["evidence"]["observed_days"] >= 7
    observed = next(n for n in payload["meta"]["notes"] if n.startswith("Index usage"))
    assert re.search(r"8 d on the primary, 8 d on the replica;", observed), observed
    assert "replica replica" not in json.dumps(payload)  # the replica named "replica" is "the replica"
    assert first["replicas"] == {"replica": "ok"}


def test_a_replica_that_cannot_be_read_makes_the_verdict_unknown(perf_db, replica_url):
    replica = {"replica": lambda: psycopg.connect(replica_url, autocommit=True)}
    closed_port = {"replica": lambda: psycopg.connect(_closed_port(replica_url), autocommit=True, connect_timeout=2)}
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX ls_played_idx ON listening_sessions (played_at)")
        wait_replayed(perf_db, replica_url)
        assert reports.capture(conn, replicas=replica).replicas == {"replica": "ok"}
        _age_snapshots(conn, 8)
        down = reports.analyse(conn, ReportParams(window="1h"), replicas=closed_port, advise_with_hypopg=False)
        unread = reports.analyse(conn, ReportParams(window="1h"), advise_with_hypopg=False)  # the standby not given
        readable = reports.analyse(conn, ReportParams(window="1h"), replicas=replica, advise_with_hypopg=False)
        status = conn.execute("SELECT status, error FROM csl_ops.perf_snapshot_replicas WHERE snapshot_id = %s",
                              (down["meta"]["snapshot_id"],)).fetchone()
    assert status[0] == "unavailable" and "connection" in status[1].lower() and "@" not in status[1]
    for report, why in ((down, "the replica could not be read"), (unread, "streams to 1 standby")):
        row = next(u for u in report["tables"]["unused_indexes"] if u["index"] == "public.ls_played_idx")
        assert row["verdict"] == "unknown" and why in row["why"], row
        assert "public.ls_played_idx" not in _recs(report, "unused_index")
        assert report["summary"]["unused_indexes"] == 0
    row = next(u for u in readable["tables"]["unused_indexes"] if u["index"] == "public.ls_played_idx")
    assert row["verdict"] == "unused"  # the same evidence with the replica read: unused


def _closed_port(url: str) -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))


def test_an_index_observed_for_less_than_the_period_gets_no_drop(perf_db, replica_url):
    replica = {"replica": lambda: psycopg.connect(replica_url, autocommit=True)}
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX ls_played_idx ON listening_sessions (played_at)")
        reports.capture(conn)
        conn.execute("UPDATE csl_ops.perf_snapshots SET taken_at = taken_at - interval '3 days'")
        early = reports.analyse(conn, ReportParams(window="24h"), advise_with_hypopg=False)
        assert not _drops(early, "ls_played_idx")  # 3 days of statistics, the replica not read: no DROP
        wait_replayed(perf_db, replica_url)
        reports.capture(conn, replicas=replica)
        conn.execute("UPDATE csl_ops.perf_snapshots SET taken_at = taken_at - interval '3 days'"
                     " WHERE id = (SELECT max(id) FROM csl_ops.perf_snapshots)")
        report = reports.analyse(conn, ReportParams(window="24h"), replicas=replica, advise_with_hypopg=False)
        shorter = reports.analyse(conn, ReportParams(window="24h", unused_index_days=2), replicas=replica,
                                  advise_with_hypopg=False)
    row = next(u for u in report["tables"]["unused_indexes"] if u["index"] == "public.ls_played_idx")
    assert row["verdict"] == "not enough evidence" and row["why"].startswith("not enough evidence yet: observed 3 d")
    assert "of the 7 d needed" in row["why"] and 2.9 < row["observed_days"] < 3.1
    assert not _drops(report, "ls_played_idx")
    assert report["summary"]["unused_indexes"] == 0
    assert any("not enough evidence yet for DROP INDEX advice" in n for n in report["meta"]["notes"])
    assert _recs(shorter, "unused_index")["public.ls_played_idx"]["statement"].startswith("DROP INDEX CONCURRENTLY")


def test_catalog_indexes_are_never_given_a_drop_statement(perf_db, replica_url):
    catalog = {d.name: d for d in load_catalog()}
    declared = catalog["idx_users_role_created"]
    replica = {"replica": lambda: psycopg.connect(replica_url, autocommit=True)}
    with psycopg.connect(perf_db, autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS {declared.name}")
        conn.execute(declared.statement)  # the catalog's own, as csl_index_install builds it
        conn.execute("CREATE INDEX users_role_created_email_idx ON users (role, created_at, email)")  # covers it
        conn.execute("CREATE INDEX users_role_idx ON users (role)")  # not declared: a duplicate to drop
        reports.capture(conn)
        _age_snapshots(conn, 8)
        unread = reports.analyse(conn, ReportParams(window="1h"), advise_with_hypopg=False)
        assert not _drops(unread, declared.name)
        wait_replayed(perf_db, replica_url)
        reports.capture(conn, replicas=replica)
        _age_snapshots(conn, 8)
        report = reports.analyse(conn, ReportParams(window="1h"), replicas=replica, advise_with_hypopg=False)
    unused, duplicate = _recs(report, "unused_index"), _recs(report, "duplicate_index")
    target = f"public.{declared.name}"
    assert unused[target]["statement"] is None and "remove its entry from the catalog" in unused[target]["message"]
    assert declared.why in unused[target]["message"]
    assert duplicate[target]["statement"] is None and "remove its entry" in duplicate[target]["message"]
    assert duplicate["public.users_role_idx"]["statement"] == 'DROP INDEX CONCURRENTLY "public"."users_role_idx"'
    for r in report["recommendations"]:  # whatever the platform schema declares: never a DROP of the catalog's
        if (r["statement"] or "").startswith("DROP INDEX"):
            assert r["target"].split(".", 1)[1] not in catalog, r


@pytest.mark.parametrize(("text", "shown"), [
    ("/* a /* b */ SELECT 1; -- */ SELECT x FROM t WHERE a = 'x'", "/*…*/ SELECT x FROM t WHERE a = ?"),
    ("SELECT E'it\\'s', 'it''s', $tag$ $$ 'q' $tag$, U&'d\\0061t', n'x', 1.5e-3, .5, 0x1F, $1",
     "SELECT ?, ?, ?, ?, ?, ?, ?, ?, $1"),
    ('SELECT "col\'umn", a$b$c FROM "t""x"', 'SELECT "col\'umn", a$b$c FROM "t""x"'),
    ("SELECT 'cut by track_activity_query_size: secr", "SELECT ?"),
])
def test_texts_are_shown_without_literals_as_postgresql_reads_them(text, shown):
    from csl.reports.sqltext import redact

    assert redact(text) == shown


def test_what_the_advisor_tries_to_cost():
    from csl.reports.sqltext import not_costable

    assert not_costable("/* UPDATE t */ (SELECT a FROM t) UNION SELECT 'DELETE'") is None
    assert not_costable("WITH x AS (SELECT 1) SELECT * FROM x") is None
    assert not_costable("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x") == "not costed: write statement"
    assert not_costable("SELECT * INTO copy FROM t") == "not costed: write statement"
    assert not_costable("SELECT * FROM t FOR KEY SHARE").startswith("not costed: locking read")
    assert not_costable("VACUUM t") == "not costed: not a SELECT/WITH statement"
