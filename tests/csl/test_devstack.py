"""scripts/devstack.py: who can reach the stack's PostgreSQL, and where its secrets go.

Real servers: the session's stack, plus a PostgreSQL primary and standby made here from
scratch (with every command the script runs recorded), and one run by a normal OS user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import devstack
import psycopg
import pytest
from devstack import PG_BIN, Stack

from ..conftest import REPO, process_tree

PSQL = str(PG_BIN / "psql")
# what initdb wrote into pg_hba.conf before: any local user was the superuser
OLD_TRUST_HBA = """local   all             all                                     trust
host    all             all             127.0.0.1/32            scram-sha-256
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            scram-sha-256
"""


def socket_psql(stack: Stack, *, port_name: str = "pg_primary", as_user: str | None = None):
    """psql straight to the stack's socket as the superuser, run by ``as_user`` (or ourselves)."""
    cmd = [PSQL, "-X", "-At", "-h", str(stack.pg_socket), "-p", str(stack.ports[port_name]), "-U", "postgres",
           "-d", "postgres", "-c", "SELECT current_user"]
    if as_user:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def secret_values(stack: Stack) -> dict[str, str]:
    return dict(stack.secrets)


@pytest.fixture(scope="module")
def fresh_pg(stack):
    """A PostgreSQL primary + standby built from nothing, every command line recorded."""
    state = REPO / ".local" / f"devstack-test-{os.getpid()}"
    devstack.remove_state(state)
    handle = Stack(state, state / ".env")
    commands: list[list[str]] = []
    pwfile_modes: list[tuple[int, int]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def record(cmd):
        argv = [str(part) for part in cmd]
        commands.append(argv)
        for part in argv:
            if part.startswith("--pwfile="):
                info = os.stat(part.split("=", 1)[1])
                pwfile_modes.append((stat.S_IMODE(info.st_mode), info.st_uid))

    def run(cmd, *args, **kwargs):
        record(cmd)
        return real_run(cmd, *args, **kwargs)

    def popen(cmd, *args, **kwargs):
        record(cmd)
        return real_popen(cmd, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(devstack.subprocess, "run", run)
    mp.setattr(devstack.subprocess, "Popen", popen)
    try:
        handle.ensure_config()
        handle.pg_primary_up()
        handle.pg_replica_up()
    finally:
        mp.undo()
    try:
        yield handle, commands, pwfile_modes
    finally:
        for name in ("pg-replica", "pg-primary"):
            handle.stop(name)
        devstack.remove_state(state)


def test_only_the_servers_own_os_user_gets_in_through_the_socket(stack):
    for port_name in ("pg_primary", "pg_replica"):
        assert stack.psql("SELECT current_user", port_name=port_name) == "postgres"
    info = stack.pg_socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == pwd.getpwnam(devstack.postgres_os_user()).pw_uid
    if os.geteuid() == 0:
        for port_name in ("pg_primary", "pg_replica"):
            # an unprivileged local user cannot even reach the socket
            nobody = socket_psql(stack, port_name=port_name, as_user="nobody")
            assert nobody.returncode != 0 and "postgres" not in nobody.stdout
            assert "permission denied" in nobody.stderr.lower()
            # an OS user that can reach it (root) is still not the server's user: peer refuses it
            other = socket_psql(stack, port_name=port_name)
            assert other.returncode != 0 and "peer authentication failed" in other.stderr.lower()
    rules = stack.psql("SELECT type, auth_method FROM pg_hba_file_rules ORDER BY line_number")
    assert "trust" not in rules and "local|peer" in rules


def test_no_file_another_local_user_can_read_carries_a_secret(stack):
    """Walk the stack's folder as another user would: only folders others may enter, only files
    others may read; none may hold a secret (S3 access keys included)."""
    secrets = secret_values(stack)
    # SeaweedFS names its access key in its own log, flushed every 30 s: wait until it is there
    weed_log = stack.state / "s3-primary" / "logs" / "weed.INFO"
    deadline = time.monotonic() + 60
    while secrets["s3_primary_key"].encode() not in (weed_log.read_bytes() if weed_log.exists() else b""):
        assert time.monotonic() < deadline, f"{weed_log} never named the access key"
        time.sleep(1)
    readable = []
    for folder, dirs, files in os.walk(stack.state):
        dirs[:] = [d for d in dirs if os.stat(os.path.join(folder, d)).st_mode & stat.S_IXOTH]
        for name in files:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & stat.S_IROTH:
                readable.append(path)
                data = path.read_bytes()
                carried = [key for key, value in secrets.items() if value.encode() in data]
                assert not carried, f"{path} is readable by every local user and carries {carried}"
    assert readable, "the walk saw nothing: the test would prove nothing"


def test_no_secret_on_a_command_line_in_a_log_or_a_readable_file(fresh_pg):
    stack, commands, pwfile_modes = fresh_pg
    secrets = secret_values(stack)
    for cmd in commands:
        for name, value in secrets.items():
            assert value not in " ".join(cmd), f"{name} on the command line of {cmd[:6]}"
    programs = {Path(cmd[4] if cmd[0] == "runuser" else cmd[0]).name for cmd in commands}
    assert {"initdb", "psql", "pg_basebackup", "pg_ctl"} <= programs
    # the running servers and every process under them (walsender, walreceiver, backends)
    pids = [stack.pid("pg-primary"), stack.pid("pg-replica")]
    assert None not in pids
    for pid in process_tree(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except FileNotFoundError:
            continue
        assert not [name for name, value in secrets.items() if value in cmdline], cmdline
    # initdb's password file was never readable by others, and belonged to the server's user
    assert pwfile_modes and all(mode == 0o600 for mode, _ in pwfile_modes)
    # nothing in the state folder carries a secret unless only its owner can read it
    for path in stack.state.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        carried = [name for name, value in secrets.items() if value.encode() in data]
        if carried:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} carries {carried}"
            assert path.name in ("stack.json", ".env", "replicator.pgpass"), f"{path} carries {carried}"
    # the standby reads the replicator's password from the passfile, not from its config
    auto = (stack.pg_dir / "replica" / "postgresql.auto.conf").read_text()
    assert "passfile=" in auto and secrets["pg_replicator"] not in auto
    assert stack.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
    # the roles were given SCRAM verifiers: the clear passwords still log in over TCP
    url = stack.urls()["primary"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("csl",)


def test_a_failing_statement_prints_no_secret(fresh_pg):
    """What main() prints on failure is the CalledProcessError (its argv) and psql's stderr."""
    stack, _, _ = fresh_pg
    with pytest.raises(subprocess.CalledProcessError) as caught:
        stack.pg_bootstrap()  # the roles exist already: psql fails on the first statement
    printed = f"{caught.value} {caught.value.stderr}"
    assert "already exists" in printed
    assert not [name for name, value in secret_values(stack).items() if value in printed], printed


def test_up_on_a_stack_made_with_trust_closes_it(fresh_pg):
    """Stacks created before: trust on the socket and a world-usable socket directory."""
    stack, _, _ = fresh_pg
    for data in (stack.pg_dir / "primary", stack.pg_dir / "replica"):
        (data / "pg_hba.conf").write_text(OLD_TRUST_HBA)
        devstack.as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "reload"])
    stack.pg_socket.chmod(0o755)
    deadline = time.monotonic() + 10
    while socket_psql(stack, as_user="nobody").stdout.strip() != "postgres":  # the hole, as it was
        assert time.monotonic() < deadline, "the old trust rules did not load"
        time.sleep(0.2)

    stack.pg_primary_up()
    stack.pg_replica_up()
    for port_name in ("pg_primary", "pg_replica"):
        assert socket_psql(stack, port_name=port_name, as_user="nobody").returncode != 0
        assert socket_psql(stack, port_name=port_name).returncode != 0
        assert stack.psql("SELECT current_user", port_name=port_name) == "postgres"
    assert stat.S_IMODE(stack.pg_socket.stat().st_mode) == 0o700


def test_a_stack_in_a_folder_others_cannot_enter(stack):
    """A clone in root's 0700 home: PostgreSQL (run as ``postgres``) cannot walk into it, so its
    folder lives outside, linked from the state folder, and goes away with the state."""
    closed = REPO / ".local" / f"closed-{os.getpid()}"
    closed.mkdir(mode=0o700, parents=True, exist_ok=True)
    closed.chmod(0o700)
    state = closed / "stack"
    handle = Stack(state, state / ".env")
    try:
        handle.ensure_config()
        handle.pg_primary_up()
        assert handle.psql("SELECT current_user") == "postgres"
        assert (state / "pg").is_symlink() and devstack.reachable_by_others(handle.pg_dir)
        assert (handle.pg_dir / "pg-primary.log").stat().st_size > 0  # the server could write its log
    finally:
        handle.stop("pg-primary")
        outside = devstack.outside_root(state.resolve())
        devstack.remove_state(state)
        shutil.rmtree(closed, ignore_errors=True)
    assert not outside.exists() and not state.exists()


def test_a_stack_run_by_a_normal_user(stack):
    """Not root: the servers run as the user itself, and that user is the socket's only one."""
    user = "nobody" if os.geteuid() == 0 else None
    state, scripts = REPO / ".local" / f"devstack-user-{os.getpid()}", REPO / "scripts"
    if user and not devstack.reachable_by_others(scripts):  # a clone in root's 0700 home: nobody
        base = Path(tempfile.mkdtemp(prefix="csl-devstack-user-", dir="/var/tmp"))  # gets a copy it can reach
        base.chmod(0o755)
        shutil.copy(scripts / "devstack.py", base / "devstack.py")
        state, scripts = base / "state", base
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(state, entry.pw_uid, entry.pw_gid)
    script = (f"import sys; sys.path.insert(0, {str(scripts)!r}); from pathlib import Path; "
              "from devstack import Stack; "
              f"s = Stack(Path({str(state)!r}), Path({str(state)!r}) / '.env'); s.ensure_config(); "
              "s.pg_primary_up() if sys.argv[1] == 'up' else s.stop('pg-primary'); "
              "print(s.psql('SELECT current_user') if sys.argv[1] == 'up' else 'stopped')")

    def as_user(action: str):
        cmd = ["/usr/bin/python3", "-c", script, action]
        return subprocess.run(["runuser", "-u", user, "--", *cmd] if user else cmd, capture_output=True, text=True,
                              timeout=180, cwd=state, check=False)

    try:
        started = as_user("up")
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == "postgres"
        handle = Stack(state, state / ".env")
        handle.load_config()
        if user:
            assert handle.pg_socket.stat().st_uid == Path(state).stat().st_uid
            refused = socket_psql(handle)  # root: can reach the socket, is not the server's user
            assert refused.returncode != 0 and "peer authentication failed" in refused.stderr.lower()
            assert socket_psql(handle, as_user="postgres").returncode != 0
        assert stat.S_IMODE(handle.pg_socket.stat().st_mode) == 0o700
    finally:
        stopped = as_user("stop")
        shutil.rmtree(state if scripts == REPO / "scripts" else scripts, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr


def test_files_with_secrets_are_0600_from_their_first_byte(tmp_path, monkeypatch):
    """A file made at 0644 and chmod-ed afterwards is readable in between: with chmod doing
    nothing, what the stack writes must still be 0600 (also over an older 0644 file)."""
    monkeypatch.setattr(Path, "chmod", lambda self, mode, **kw: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **kw: None)
    old_umask = os.umask(0o022)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    try:
        state = tmp_path / "stack"
        handle = Stack(state, state / ".env")
        state.mkdir()
        handle.env_file.write_text("OLD='a value from before'\n")  # 0644, as stacks wrote it
        handle.ensure_config()
        assert mode(handle.config_path) == 0o600
        handle.write_env()
        assert mode(handle.env_file) == 0o600
        passwords = handle.write_airflow_passwords()
        assert mode(passwords) == 0o600
        handle.spawn("sleeper", ["true"])
        assert mode(handle.logs / "sleeper.log") == 0o600
    finally:
        os.umask(old_umask)
    assert json.loads(passwords.read_text()) == {"admin": handle.secrets["airflow_admin"]}
    assert "OLD=" not in handle.env_file.read_text()
    assert not list(state.glob(".*.tmp")), "no temporary file left behind"


def test_the_airflow_admin_password_is_for_clients_only(tmp_path, monkeypatch):
    state = tmp_path / "stack"
    handle = Stack(state, state / ".env")
    handle.ensure_config()
    admin = handle.secrets["airflow_admin"]
    monkeypatch.setenv("CSL_AIRFLOW_ADMIN_PASSWORD", "exported-by-the-calling-shell")
    env = handle.airflow_process_env()
    assert "CSL_AIRFLOW_ADMIN_PASSWORD" not in env
    assert not [key for key, value in env.items() if admin in value]
    # Airflow still gets its own settings; clients (demo.py, tests) still find the password
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].endswith("passwords.json")
    handle.write_env()
    assert f"CSL_AIRFLOW_ADMIN_PASSWORD='{admin}'" in handle.env_file.read_text().splitlines()


def test_scram_verifier_is_what_postgresql_checks(stack):
    """A role given our verifier logs in with the clear password over TCP (and only with it)."""
    password = "clear-" + os.urandom(6).hex()
    stack.psql(f"DROP ROLE IF EXISTS t_verifier; CREATE ROLE t_verifier LOGIN PASSWORD "
               f"'{devstack.scram_verifier(password)}'")
    try:
        stored = stack.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 't_verifier'")
        assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored
        base = f"host=127.0.0.1 port={stack.ports['pg_primary']} dbname=postgres user=t_verifier connect_timeout=5"
        with psycopg.connect(f"{base} password={password}") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("t_verifier",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"{base} password=wrong-{password}")
    finally:
        stack.psql("DROP ROLE IF EXISTS t_verifier")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses that listen on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


def test_the_test_stack_runs_motos_s3_server_on_loopback_by_pid(stack):
    """moto's standalone S3 server (issue 14: a provider that lists in byte order) runs in its own
    process group, listens on loopback only, is stopped by its pid and started again, and is
    no platform provider: the env file does not name it."""
    pid = stack.pid("moto")
    assert pid is not None and os.getpgid(pid) == pid
    port = stack.ports["moto"]
    url = stack.urls()["moto"]
    assert url == f"http://127.0.0.1:{port}" and devstack.http_status(url + "/") == 200
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert stack.status()["moto"] == {"pid": pid, "running": True}
    assert not [key for key, value in stack.env_values().items() if f":{port}" in value]
    stack.stop("moto")
    try:
        assert stack.pid("moto") is None and not devstack.port_open(port)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing of its group is left
    finally:
        stack.start("moto")
    assert devstack.http_status(url + "/") == 200 and stack.pid("moto") not in (None, pid)


def test_moto_starts_only_when_asked(tmp_path, monkeypatch):
    """`up` (the demo's) leaves moto out; `up --moto` (the test stack's) starts it after the rest."""
    calls: list[str] = []
    handle = Stack(tmp_path / "stack", tmp_path / "stack" / ".env")
    for step in ("ensure_config", "pg_primary_up", "pg_replica_up", "write_env", "buckets_up", "edge_up",
                 "moto_up", "airflow_up"):
        monkeypatch.setattr(handle, step, lambda step=step: calls.append(step))
    monkeypatch.setattr(handle, "s3_up", lambda service: calls.append(service))
    handle.up(airflow=False)
    assert "moto_up" not in calls
    calls.clear()
    handle.up(airflow=False, moto=True)
    assert calls[-1] == "moto_up"
    parsed = []
    monkeypatch.setattr(devstack.Stack, "up", lambda self, **kw: parsed.append(kw))
    assert devstack.main(["up", "--state", str(tmp_path / "s"), "--moto"]) == 0
    assert devstack.main(["up", "--state", str(tmp_path / "s")]) == 0
    assert devstack.main(["up", "--state", str(tmp_path / "s"), "--airflow", "--executor", "celery"]) == 0
    assert parsed == [{"airflow": False, "moto": True, "monitoring": False, "executor": None},
                      {"airflow": False, "moto": False, "monitoring": False, "executor": None},
                      {"airflow": True, "moto": False, "monitoring": False, "executor": "celery"}]
    with pytest.raises(SystemExit) as refused:
        devstack.main(["up", "--state", str(tmp_path / "s"), "--executor", "kubernetes"])
    assert refused.value.code == 2 and len(parsed) == 3


def test_stop_ends_a_descendant_that_left_the_process_group(tmp_path):
    """Airflow's task supervisor gives each task process a group of its own: stopping a worker by
    its group alone would leave its tasks running, orphaned."""
    state = tmp_path / "stack"
    handle = Stack(state, state / ".env")
    handle.ensure_config()
    stray_pid_file = tmp_path / "stray.pid"
    program = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setpgid(0, 0)\n"
        f"    open({str(stray_pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(300)\n"
        "    sys.exit(0)\n"
        "time.sleep(300)\n")
    handle.spawn("worker", [sys.executable, "-c", program])
    deadline = time.monotonic() + 20
    while not stray_pid_file.exists() or not stray_pid_file.read_text():
        assert time.monotonic() < deadline, "the stray did not start"
        time.sleep(0.1)
    stray = int(stray_pid_file.read_text())
    assert os.getpgid(stray) == stray != handle.pid("worker")
    assert handle.kill_group("worker", timeout=5)
    deadline = time.monotonic() + 10
    while devstack.pid_alive(stray):
        assert time.monotonic() < deadline, "the descendant in its own group outlived its service"
        time.sleep(0.1)
    assert handle.pid("worker") is None


def test_the_executor_is_chosen_once_and_celery_gets_its_settings(tmp_path):
    state = tmp_path / "stack"
    handle = Stack(state, state / ".env")
    handle.ensure_config()
    assert handle.executor == "local" and handle.celery_env() == {}
    assert handle.airflow_env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert handle.airflow_services() == devstack.AIRFLOW_SERVICES
    with pytest.raises(devstack.StackError, match="executor: expected one of local, celery, got 'kubernetes'"):
        handle.use_executor("kubernetes")
    handle.use_executor("celery")
    again = Stack(state, state / ".env")
    again.load_config()  # kept in stack.json
    env = again.airflow_env()
    assert again.executor == "celery" and env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{again.secrets['redis']}@127.0.0.1:{again.ports['redis']}/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "csl_airflow.hostname.worker_hostname"
    assert again.airflow_services()[-2:] == devstack.CELERY_WORKERS
    # the Redis job is rendered into Prometheus's configuration only under Celery
    again.monitoring_config()
    again.monitoring_dir.mkdir(parents=True)
    assert "job_name: redis" in again.prometheus_config().read_text()
    again.use_executor("local")
    again.load_config()
    assert "job_name: redis" not in again.prometheus_config().read_text()
    assert again.airflow_env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and again.celery_env() == {}


def test_worker_hostname_names_the_worker(monkeypatch):
    import socket

    from csl_airflow.hostname import worker_hostname

    monkeypatch.delenv("CSL_WORKER_NAME", raising=False)
    assert worker_hostname() == socket.getfqdn()
    monkeypatch.setenv("CSL_WORKER_NAME", "csl-worker-2")
    assert worker_hostname() == f"csl-worker-2.{socket.getfqdn()}"
    monkeypatch.setenv("CSL_WORKER_NAME", "bad name;rm")
    with pytest.raises(ValueError, match="CSL_WORKER_NAME"):
        worker_hostname()
