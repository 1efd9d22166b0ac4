#!/usr/bin/env python3
"""The local stack: real servers on loopback, started and stopped by pid.

    python scripts/devstack.py up [--state DIR] [--env-file FILE] [--airflow] [--moto] [--monitoring]
                                  [--executor local|celery]
    python scripts/devstack.py down|status [--state DIR]
    python scripts/devstack.py stop NAME | start NAME      (one service, e.g. for failover tests)

Services: PostgreSQL primary (pg_stat_statements, hypopg) and a streaming hot standby made
with ``pg_basebackup -R``; two SeaweedFS S3 endpoints (the ``primary`` and ``fallback``
storage providers: kinds minio and s3, both listing in path order, ``S3_LISTING_ORDER=path``,
and checking SHA-256 upload checksums); Varnish with xkey in front of the public audio bucket; optionally
Airflow (api-server, scheduler, dag-processor, triggerer) with its metadata in the same
PostgreSQL; optionally (the test stack) moto's standalone S3 server, an S3 endpoint that lists
in AWS's byte order for tests to build a third provider on (``Stack.urls()["moto"]``; not a
platform provider: the env file keeps the two above; any key pair is accepted; objects live
in its memory); optionally (``--monitoring``, README "Monitoring") Prometheus, a postgres
exporter per server, the Varnish exporter and collectd as the bridge for Airflow's StatsD;
optionally (``--executor celery``, README "Running at scale") Airflow on the CeleryExecutor: Redis
as the broker (``redis-server``, loopback, a password), the result backend in the Airflow
database and two ``airflow celery worker`` processes, each reporting its own host name (with
monitoring, the Redis exporter too). The executor is kept in ``stack.json`` until changed.
Ports are chosen free once and kept in ``DIR/stack.json`` with the generated secrets, so ``up``
again reuses everything that is already running. Each service logs to ``DIR/logs/NAME.log``;
its pid is in ``DIR/pids/NAME.pid`` (PostgreSQL's in its data dir).
Only standard library here: it runs before the virtualenv has anything installed.

Access: PostgreSQL's Unix socket sits in a 0700 directory of the user the server runs as, and
only that OS user gets in, as the superuser ``postgres`` (peer authentication mapped in
``pg_ident.conf``); TCP on loopback needs a password (SCRAM). Secrets never go on a command line
(``ps`` shows those to everyone): SQL goes to psql on stdin with role passwords as SCRAM
verifiers, the replica authenticates with a 0600 passfile. Files holding secrets (``stack.json``,
the env file, Airflow's passwords file, passfiles) and the logs are 0600 from their first byte.
The Airflow admin password is for clients (the env file, ``stack.json``), never in the
environment of Airflow's processes and so of its tasks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # run with the project's .venv python
PG_BIN = Path(os.environ.get("CSL_PG_BIN", "/usr/lib/postgresql/15/bin"))
VARNISHD = os.environ.get("CSL_VARNISHD", "/usr/sbin/varnishd")

PLATFORM_DB = "cultural_sound_lab"
AUDIO_BUCKET = "cultural-audio"  # every object; private
PUBLISHED_BUCKET = "cultural-audio-published"  # copies of the approved samples; public read, the edge's backend
FALLBACK_BUCKET = "cultural-audio-fallback"
S3_SERVICES = ("s3-primary", "s3-fallback")
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
MOTO = "moto"  # moto's S3 server: byte-order listings, for tests (not a platform provider)
# The CeleryExecutor (``up --executor celery``): Redis, the broker, starts before Airflow; the
# workers after it (``down`` stops them before the scheduler, Redis after it).
CELERY_WORKERS = ("airflow-worker-1", "airflow-worker-2")
ALL_SERVICES = ("pg-primary", "pg-replica", *S3_SERVICES, MOTO, "edge", "redis", *AIRFLOW_SERVICES,
                *CELERY_WORKERS)
# Monitoring (issue 16, ``up --monitoring``): Debian's Prometheus and exporters, collectd as the
# StatsD bridge for Airflow's metrics. Listed after Airflow: ``down`` (reversed) stops them first.
MONITORING_SERVICES = ("statsd-bridge", "pg-exporter-primary", "pg-exporter-replica", "edge-exporter", "prometheus")
# Under Celery with monitoring: the Redis exporter (its password in its environment only).
ALL_SERVICES = (*ALL_SERVICES, *MONITORING_SERVICES, "redis-exporter")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
REDIS_SERVER = os.environ.get("CSL_REDIS_SERVER", "/usr/bin/redis-server")
REDIS_EXPORTER = os.environ.get("CSL_REDIS_EXPORTER", "/usr/bin/prometheus-redis-exporter")
CELERY_CONCURRENCY = int(os.environ.get("CSL_CELERY_CONCURRENCY", "4"))  # task slots per worker
PROMETHEUS = os.environ.get("CSL_PROMETHEUS", "/usr/bin/prometheus")
PG_EXPORTER = os.environ.get("CSL_PG_EXPORTER", "/usr/bin/prometheus-postgres-exporter")
VARNISH_EXPORTER = os.environ.get("CSL_VARNISH_EXPORTER", "/usr/bin/prometheus-varnish-exporter")
COLLECTD = os.environ.get("CSL_COLLECTD", "/usr/sbin/collectd")
SCRAPE_INTERVAL_S = int(os.environ.get("CSL_SCRAPE_INTERVAL_S", "5"))
# In the env file for clients (the demo, the tests log in with it); never in Airflow's processes.
CLIENT_ONLY_ENV = ("CSL_AIRFLOW_ADMIN_PASSWORD",)


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def choose_port(ports: dict, name: str, *, udp_too: bool = False) -> bool:
    """Give ``name`` a free loopback port (TCP, and UDP too if asked) no other name of the stack
    has; True when one was chosen, False when it had one already."""
    if name in ports:
        return False
    taken = set(ports.values())
    candidate = free_port()
    while candidate in taken or (udp_too and not udp_port_free(candidate)):
        candidate = free_port()
    ports[name] = candidate
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(what: str, check, *, timeout: float, interval: float = 0.25, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any probe failure is what we wait out; the last is reported
            last_error = f" (last probe: {type(exc).__name__}: {exc})"
        time.sleep(interval)
    tail = ""
    if log_file and log_file.exists():
        tail = "\n  last log lines:\n    " + "\n    ".join(log_file.read_text(errors="replace").splitlines()[-15:])
    raise StackError(f"{what} not ready after {timeout:.0f}s{last_error}{tail}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (our own zombies are reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def process_tree(root_pids: list[int]) -> list[int]:
    """The pids and every descendant, also those in process groups of their own (Airflow's task
    supervisor puts each task process in a new group: a group signal misses it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(root_pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: run its binaries as the postgres user then."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def postgres_os_user() -> str:
    """The OS user PostgreSQL's binaries run as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def write_private(path: Path, text: str, *, for_postgres: bool = False) -> None:
    """Write ``path`` as a 0600 file from its first byte, also over an older, wider one: a fresh
    file beside it (created 0600), renamed over the old. ``for_postgres``: owned by the user the
    PostgreSQL binaries run as (a passfile must belong to the client that reads it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if for_postgres:
            chown_postgres(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_log(path: Path, *, for_postgres: bool = False) -> Path:
    """A log file that only its writer (and root) can read: logs may quote what failed."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)
    if for_postgres:
        chown_postgres(path)
    return path


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (what psql's ``\\password``
    sends): given in ``CREATE ROLE … PASSWORD``, it is stored as is, so the clear password is
    never in a statement, a server log line or ``pg_stat_activity``."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = (lambda raw: base64.b64encode(raw).decode())
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def reachable_by_others(path: Path) -> bool:
    """Whether another OS user can walk down to ``path`` (x for others on it and every parent)."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p != Path("/"))


def outside_root(state: Path) -> Path:
    """Where the parts that run as other OS users live when ``state`` is out of their reach
    (PostgreSQL runs as ``postgres``, Varnish's jail as ``vcache``; a clone in root's 0700 home):
    a folder of this stack's own under /var/tmp, linked from the state folder."""
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:16]
    return Path("/var/tmp") / f"csl-stack-{digest}"


def remove_state(state: Path) -> None:
    """Delete a stack's state folder (stopped first), and what it keeps outside it."""
    state = state.resolve()
    shutil.rmtree(outside_root(state), ignore_errors=True)  # every part Stack.part moved out
    shutil.rmtree(state, ignore_errors=True)


class Stack:
    def __init__(self, state: Path, env_file: Path) -> None:
        self.state = state.resolve()
        self.env_file = env_file.resolve()
        self.logs = self.state / "logs"
        self.pids = self.state / "pids"
        self.config_path = self.state / "stack.json"
        self.config: dict = {}

    def part(self, name: str) -> Path:
        """The folder of a part run as another OS user (``pg``, ``edge``): in the state folder, or,
        when other users cannot reach it, outside it (see ``outside_root``) behind a symlink."""
        link = self.state / name
        if link.is_symlink():
            return link.resolve()
        if link.exists() or reachable_by_others(self.state):
            return link
        target = outside_root(self.state) / name
        outside_root(self.state).mkdir(mode=0o755, parents=True, exist_ok=True)
        outside_root(self.state).chmod(0o755)
        target.mkdir(mode=0o755, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        return target

    def edge_work_dir(self) -> Path:
        """Varnish's ``-n`` folder (``varnishstat -n`` reads the hit ratio there), without making it."""
        link = self.state / "edge"
        if link.is_symlink():
            return link.resolve() / "work"
        if link.exists() or reachable_by_others(self.state):
            return link / "work"
        return outside_root(self.state) / "edge" / "work"

    def pg_log(self, name: str) -> Path:
        """A PostgreSQL log: written by the server's OS user, so beside its data when outside."""
        folder = self.logs if self.part("pg").parent == self.state else self.part("pg")
        return folder / f"{name}.log"

    # -- configuration: ports and secrets, chosen once -------------------------------------
    def load_config(self) -> dict:
        if self.config_path.exists():
            self.config = json.loads(self.config_path.read_text())
        return self.config

    def ensure_config(self) -> dict:
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.pids.mkdir(exist_ok=True)
        for path in self.logs.glob("*.log"):  # logs of stacks made when they were world-readable
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        cfg = self.load_config()
        changed = False

        def port(name: str) -> None:
            nonlocal changed
            changed = choose_port(cfg.setdefault("ports", {}), name) or changed

        def secret(name: str, maker=lambda: secrets.token_urlsafe(18)) -> None:
            nonlocal changed
            values = cfg.setdefault("secrets", {})
            if name not in values:
                values[name] = maker()
                changed = True

        for name in ("pg_primary", "pg_replica", "edge", "airflow_api", MOTO):
            port(name)
        for service in S3_SERVICES:
            for listener in WEED_LISTENERS:
                port(f"{service}.{listener}")
        for name in ("pg_superuser", "pg_csl", "pg_airflow", "pg_replicator", "airflow_admin",
                     "s3_primary_secret", "s3_fallback_secret", "airflow_jwt", "airflow_secret_key"):
            secret(name)
        secret("s3_primary_key", lambda: "CSLP" + secrets.token_hex(8).upper())
        secret("s3_fallback_key", lambda: "CSLF" + secrets.token_hex(8).upper())
        secret("airflow_fernet", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode())
        if changed:
            write_private(self.config_path, json.dumps(cfg, indent=2))
        elif self.config_path.stat().st_mode & 0o077:
            self.config_path.chmod(0o600)
        return cfg

    @property
    def ports(self) -> dict:
        return self.config["ports"]

    @property
    def secrets(self) -> dict:
        return self.config["secrets"]

    def redact(self, text: str) -> str:
        """``text`` with every secret of this stack replaced by ``***`` (for error output)."""
        for value in sorted(self.config.get("secrets", {}).values(), key=len, reverse=True):
            if len(value) >= 6:
                text = text.replace(value, "***")
        return text

    # -- process bookkeeping ---------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        if name == "pg-primary":
            return self.state / "pg" / "primary" / "postmaster.pid"
        if name == "pg-replica":
            return self.state / "pg" / "replica" / "postmaster.pid"
        return self.pids / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        path = self.pid_file(name)
        try:
            text = path.read_text().split()
        except (FileNotFoundError, PermissionError):
            return None
        if not text:
            return None
        pid = int(text[0])
        return pid if pid_alive(pid) else None

    def spawn(self, name: str, cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> int:
        """Start a long-running process in its own process group, logging to a file."""
        log_path = private_log(self.logs / f"{name}.log")
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.pid_file(name).write_text(str(proc.pid))
        return proc.pid

    def kill_group(self, name: str, *, timeout: float = 20) -> bool:
        """SIGTERM the service's main pid, then sweep its process group (TERM, then KILL).

        The main pid first: Airflow's scheduler shuts its workers down itself, and hangs
        when every worker gets the signal at once.
        """
        pid = self.pid(name)
        if pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            return False

        def group_alive() -> bool:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return False
            return True

        def wait(check, seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and check():
                time.sleep(0.1)

        # descendants in groups of their own (a worker's task processes): found now, while the
        # tree still hangs together, and ended after the group if still there
        strays = [p for p in process_tree([pid])[1:] if _pgid(p) not in (pid, None)]
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        wait(lambda: pid_alive(pid), timeout)
        for sig, seconds in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if not group_alive():
                break
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            wait(group_alive, seconds)
        for stray in strays:
            if pid_alive(stray):
                os.kill(stray, signal.SIGKILL)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    # -- PostgreSQL ------------------------------------------------------------------------
    @property
    def pg_dir(self) -> Path:
        return self.part("pg")

    @property
    def pg_socket(self) -> Path:
        return self.pg_dir / "sock"

    def psql(self, sql: str, *, db: str = "postgres", port_name: str = "pg_primary") -> str:
        """Run ``sql`` as the superuser ``postgres`` over the Unix socket; its output (``-At``).

        The text goes on stdin, never on the command line (``ps`` shows every user the
        arguments). psql runs it as a script: statement by statement, each in its own
        transaction unless the text says BEGIN/COMMIT; the first error stops it (exit 3).
        """
        result = as_postgres([str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                              "-h", str(self.pg_socket), "-p", str(self.ports[port_name]), "-U", "postgres",
                              "-d", db, "-f", "-"], input=sql)
        return result.stdout.strip()

    def pg_access(self, data: Path) -> bool:
        """Write the data dir's pg_hba.conf/pg_ident.conf (ours: peer for the server's OS user on
        the socket, SCRAM on loopback); True when they changed, e.g. on a stack made with trust."""
        wanted = {"pg_hba.conf": PG_HBA, "pg_ident.conf": PG_IDENT.format(os_user=postgres_os_user())}
        changed = False
        for name, text in wanted.items():
            path = data / name
            if not path.exists() or path.read_text() != text:
                write_private(path, text, for_postgres=True)
                changed = True
        return changed

    def pg_reload(self, data: Path, port_name: str) -> None:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "reload"])
        wait_for(f"{data.name}: pg_hba.conf loaded",
                 lambda: self.psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
                                   port_name=port_name) == "0", timeout=10)

    def pg_ready(self, port_name: str) -> bool:
        result = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                                 str(self.ports[port_name]), "-t", "1"], capture_output=True, check=False)
        return result.returncode == 0

    def pg_primary_up(self) -> None:
        data = self.pg_dir / "primary"
        self.pg_dir.mkdir(exist_ok=True)
        self.pg_socket.mkdir(mode=0o700, exist_ok=True)
        self.pg_socket.chmod(0o700)  # also on stacks made when it was world-usable
        chown_postgres(self.pg_dir)
        chown_postgres(self.pg_socket)
        log_file = private_log(self.pg_log("pg-primary"), for_postgres=True)
        fresh = not (data / "PG_VERSION").exists()
        if fresh:
            log("initdb: PostgreSQL primary")
            if data.exists():
                shutil.rmtree(data)
            pwfile = self.pg_dir / ".pwfile"
            write_private(pwfile, self.secrets["pg_superuser"] + "\n", for_postgres=True)
            try:
                as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                             "--auth-local=peer", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"])
            finally:
                pwfile.unlink(missing_ok=True)
            conf = data / "postgresql.conf"
            conf.write_text(conf.read_text() + PRIMARY_CONF.format(port=self.ports["pg_primary"],
                                                                     socket=self.pg_socket))
        access_changed = self.pg_access(data)
        if self.pid("pg-primary") is None:
            log(f"starting PostgreSQL primary on 127.0.0.1:{self.ports['pg_primary']}")
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-w", "-t", "60", "start"])
        elif access_changed:
            log("PostgreSQL primary: local trust replaced by peer authentication (pg_hba.conf reloaded)")
            self.pg_reload(data, "pg_primary")
        wait_for("PostgreSQL primary", lambda: self.pg_ready("pg_primary"), timeout=60, log_file=log_file)
        if fresh or not self.psql("SELECT 1 FROM pg_database WHERE datname = 'airflow'"):
            self.pg_bootstrap()
        self.pg_advisor_role()

    def pg_advisor_role(self) -> None:
        """The role the report's index advisor plans under (csl.reports.advice): it can read every
        table and the statistics, and write nothing. csl may SET ROLE to it. Idempotent."""
        self.psql("""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'csl_advisor') THEN
                    CREATE ROLE csl_advisor NOLOGIN;
                END IF;
            END $$;
            GRANT pg_monitor, pg_read_all_data TO csl_advisor;
            GRANT csl_advisor TO csl;
        """)

    def pg_bootstrap(self) -> None:
        s = self.secrets
        log("creating roles csl, airflow, replicator and databases cultural_sound_lab, airflow")
        self.psql(f"""
            CREATE ROLE csl LOGIN PASSWORD '{scram_verifier(s["pg_csl"])}';
            GRANT pg_monitor, pg_signal_backend TO csl;
            CREATE ROLE airflow LOGIN PASSWORD '{scram_verifier(s["pg_airflow"])}';
            CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{scram_verifier(s["pg_replicator"])}';
        """)
        # extensions need a superuser; made in template1 so every database created later has them
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; CREATE EXTENSION IF NOT EXISTS hypopg;"
                  " CREATE EXTENSION IF NOT EXISTS pgstattuple;", db="template1")
        self.psql(f"CREATE DATABASE {PLATFORM_DB} OWNER csl")
        self.psql("CREATE DATABASE airflow OWNER airflow")

    def pg_replica_up(self) -> None:
        data = self.pg_dir / "replica"
        log_file = private_log(self.pg_log("pg-replica"), for_postgres=True)
        # the replicator's password, for pg_basebackup and then the standby's walreceiver
        passfile = self.pg_dir / "replicator.pgpass"
        if "'" in str(passfile) or "\\" in str(passfile):
            raise StackError(f"{passfile}: the state folder's path must not contain quotes or backslashes")
        primary = f"127.0.0.1:{self.ports['pg_primary']}"
        write_private(passfile, f"{primary}:*:replicator:{self.secrets['pg_replicator']}\n", for_postgres=True)
        conninfo = f"host=127.0.0.1 port={self.ports['pg_primary']} user=replicator passfile='{passfile}'"
        if not (data / "PG_VERSION").exists():
            log("pg_basebackup: building the hot standby")
            if data.exists():
                shutil.rmtree(data)
            as_postgres([str(PG_BIN / "pg_basebackup"), "-d", conninfo, "-D", str(data), "-X", "stream", "-c", "fast"])
            # what -R would write, minus the password it copies into primary_conninfo
            signal_file = data / "standby.signal"
            signal_file.touch()
            chown_postgres(signal_file)
            auto = data / "postgresql.auto.conf"
            auto.write_text(auto.read_text() + f"port = {self.ports['pg_replica']}\n"
                            f"primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'\n")
        access_changed = self.pg_access(data)
        if self.pid("pg-replica") is None:
            log(f"starting PostgreSQL replica on 127.0.0.1:{self.ports['pg_replica']}")
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-w", "-t", "60", "start"])
        elif access_changed:
            log("PostgreSQL replica: local trust replaced by peer authentication (pg_hba.conf reloaded)")
            self.pg_reload(data, "pg_replica")
        wait_for("PostgreSQL replica", lambda: self.pg_ready("pg_replica"), timeout=60, log_file=log_file)
        wait_for("replica streaming from the primary",
                 lambda: self.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") != "0",
                 timeout=30, log_file=log_file)

    def pg_stop(self, name: str, *, mode: str = "fast") -> bool:
        data = self.pg_dir / ("primary" if name == "pg-primary" else "replica")
        if self.pid(name) is None:
            return False
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "60", "stop"])
        return True

    # -- SeaweedFS: one `weed mini` per storage provider -----------------------------------
    def s3_port(self, service: str) -> int:
        return self.ports[f"{service}.s3"]

    def s3_up(self, service: str) -> None:
        root = self.state / service
        for sub in ("data", "logs", "tmp"):  # objects (private ones too) and logs naming the access key
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            (root / sub).chmod(0o700)
        if self.pid(service) is None:
            role = service.split("-", 1)[1]
            p = {listener: self.ports[f"{service}.{listener}"] for listener in WEED_LISTENERS}
            env = dict(os.environ, HOME=str(root), TMPDIR=str(root / "tmp"),
                       AWS_ACCESS_KEY_ID=self.secrets[f"s3_{role}_key"],
                       AWS_SECRET_ACCESS_KEY=self.secrets[f"s3_{role}_secret"])
            cmd = [str(VENV_BIN / "weed"), f"-logdir={root / 'logs'}", "mini",
                   f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                   f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                   f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                   f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
                   f"-webdav.port={p['webdav']}", f"-webdav.cacheDir={root / 'tmp'}",
                   f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
                   f"-debug.port={p['debug']}", f"-s3.debug.port={p['debug']}",
                   "-s3.port.iceberg=0", "-s3.port.lance=0",
                   f"-filer.localSocket={root / 'data' / 'filer.sock'}",
                   f"-s3.localSocket={root / 'data' / 's3.sock'}",
                   "-master.telemetry=false"]
            log(f"starting SeaweedFS {service} (S3 on 127.0.0.1:{p['s3']})")
            self.spawn(service, cmd, env=env, cwd=root)
        wait_for(f"SeaweedFS {service}",
                 lambda: http_status(f"http://127.0.0.1:{self.s3_port(service)}/healthz") == 200,
                 timeout=60, log_file=self.logs / f"{service}.log")
        if service == "s3-primary" and self.pid("edge") is not None:
            # the edge probes its backend every 2 s: after a restart, wait until it trusts it again
            wait_for("edge backend healthy again", self.edge_backend_healthy, timeout=30,
                     log_file=self.logs / "edge.log")

    # -- moto: an S3 server that lists in byte order, like AWS ------------------------------
    def moto_up(self) -> None:
        root = self.state / MOTO
        (root / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
        port = self.ports[MOTO]
        if self.pid(MOTO) is None:
            log(f"starting moto's S3 server on 127.0.0.1:{port}")
            env = dict(os.environ, HOME=str(root), TMPDIR=str(root / "tmp"))
            self.spawn(MOTO, [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
                       env=env, cwd=root)
        wait_for("moto's S3 server", lambda: http_status(self.urls()[MOTO] + "/") == 200, timeout=60,
                 log_file=self.logs / f"{MOTO}.log")

    def edge_backend_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['edge']}/__health", timeout=2) as response:
            return response.headers.get("X-Backend-Healthy") == "true"

    def buckets_up(self) -> None:
        """Create the buckets (idempotent): each provider's own bucket is private; the primary's
        published bucket (copies of the approved samples) is public-read, the edge's backend."""
        sys.path.insert(0, str(REPO / "include"))
        from csl.config import Settings
        from csl.storage import StorageProvider

        settings = Settings.from_env(self.env_values())
        for provider in settings.storage:  # the S3 port answers a moment before credentials are accepted
            for bucket in StorageProvider(provider).ensure_buckets(wait_s=30):
                log(f"created bucket {bucket} on {provider.name}"
                    + (" (public read)" if bucket == provider.published_bucket else " (private)"))

    # -- the caching edge ------------------------------------------------------------------
    def edge_up(self) -> None:
        root = self.part("edge")
        root.mkdir(exist_ok=True)
        root.chmod(0o755)
        vcl = root / "edge.vcl"
        template = (REPO / "stack" / "varnish" / "edge.vcl").read_text()
        rendered = (template.replace("{{BACKEND_PORT}}", str(self.s3_port("s3-primary")))
                    .replace("{{BUCKET}}", PUBLISHED_BUCKET)
                    .replace("{{EDGE_TTL}}", "86400")
                    .replace("{{REFERER_REGEX}}", EDGE_REFERER_REGEX))
        vcl.write_text(rendered)
        vcl.chmod(0o644)
        for parent in [root, *root.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o005:
                raise StackError(f"{parent} is not traversable by others; varnishd's jail needs it")
        if self.pid("edge") is None:
            port = self.ports["edge"]
            log(f"starting Varnish edge on 127.0.0.1:{port}")
            work = self.edge_work_dir()
            self.spawn("edge", [VARNISHD, "-F", "-n", str(work), "-a", f"127.0.0.1:{port}",
                                "-T", "127.0.0.1:0", "-f", str(vcl), "-s", "malloc,64m"])
        wait_for("Varnish edge (and its backend)", self.edge_backend_healthy, timeout=60,
                 log_file=self.logs / "edge.log")

    # -- monitoring: Prometheus, the exporters, the StatsD bridge (issue 16) -----------------
    @property
    def monitoring_dir(self) -> Path:
        return self.state / "monitoring"

    def monitoring_config(self) -> dict:
        """The monitoring ports and the metrics role's password, chosen once (``stack.json``), and the
        mark that this stack is monitored: Airflow, started now or later, sends StatsD to the bridge."""
        cfg = self.ensure_config()
        ports, values = cfg["ports"], cfg["secrets"]
        changed = False
        for name in ("prometheus", "statsd", "statsd_bridge", "pg_exporter_primary", "pg_exporter_replica",
                     "edge_exporter"):
            changed = choose_port(ports, name, udp_too=True) or changed
        if "pg_metrics" not in values:
            values["pg_metrics"] = secrets.token_urlsafe(18)
            changed = True
        if not cfg.get("monitoring"):
            cfg["monitoring"] = True
            changed = True
        if changed:
            write_private(self.config_path, json.dumps(cfg, indent=2))
        return cfg

    def monitoring_urls(self) -> dict:
        p = self.ports
        return {"prometheus": f"http://127.0.0.1:{p['prometheus']}",
                "statsd_bridge": f"http://127.0.0.1:{p['statsd_bridge']}/metrics",
                "pg_exporter_primary": f"http://127.0.0.1:{p['pg_exporter_primary']}/metrics",
                "pg_exporter_replica": f"http://127.0.0.1:{p['pg_exporter_replica']}/metrics",
                "edge_exporter": f"http://127.0.0.1:{p['edge_exporter']}/metrics"}

    def airflow_metrics_env(self) -> dict:
        """Airflow's StatsD settings, on a monitored stack only (the bridge's UDP port on loopback)."""
        if not self.config.get("monitoring"):
            return {}
        return {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(self.ports["statsd"]),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}

    def monitoring_env(self, **extra: str) -> dict:
        """A monitoring process's whole environment: nothing inherited from the caller's (which may
        hold the stack's secrets, exported from the env file)."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.monitoring_dir), "LANG": "C.UTF-8", **extra}

    def pg_metrics_role(self) -> None:
        """``csl_metrics``, the exporters' login: reads the statistics (pg_monitor) and the tables the
        pipelines' and the platform's figures come from (pg_read_all_data); read-only by default, with
        a statement timeout and few connections. Idempotent; the replica gets it by replication."""
        verifier = scram_verifier(self.secrets["pg_metrics"])
        self.psql(f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'csl_metrics') THEN
                    CREATE ROLE csl_metrics LOGIN;
                END IF;
            END $$;
            ALTER ROLE csl_metrics LOGIN CONNECTION LIMIT 6 PASSWORD '{verifier}';
            ALTER ROLE csl_metrics SET default_transaction_read_only = on;
            ALTER ROLE csl_metrics SET statement_timeout = '10s';
            GRANT pg_monitor, pg_read_all_data TO csl_metrics;
        """)

    def pg_exporter_up(self, server: str) -> None:
        """One postgres exporter per server; its DSN (with the password) only in its environment.
        The primary's runs the pipelines' and the platform's figures (its custom-query file), the
        replica's its replication lag."""
        name, port = f"pg-exporter-{server}", self.ports[f"pg_exporter_{server}"]
        if self.pid(name) is None:
            dsn = (f"postgresql://csl_metrics:{self.secrets['pg_metrics']}@127.0.0.1:{self.ports[f'pg_{server}']}"
                   f"/{PLATFORM_DB}?sslmode=disable&application_name=csl-metrics")
            env = self.monitoring_env(DATA_SOURCE_NAME=dsn)
            cmd = [PG_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
            queries = "postgres-exporter-queries.yaml" if server == "primary" else "postgres-exporter-replica-queries.yaml"
            cmd.append(f"--extend.query-path={REPO / 'stack' / 'prometheus' / queries}")
            log(f"starting the postgres exporter of the {server} on 127.0.0.1:{port}")
            self.spawn(name, cmd, env=env, cwd=self.monitoring_dir)
        wait_for(f"postgres exporter ({server})", lambda: http_status(f"http://127.0.0.1:{port}/") == 200,
                 timeout=30, log_file=self.logs / f"{name}.log")

    def edge_exporter_up(self) -> None:
        """The Varnish exporter reads the edge's counters with varnishstat from its -n work dir."""
        port = self.ports["edge_exporter"]
        if self.pid("edge-exporter") is None:
            varnishstat = shutil.which("varnishstat") or "/usr/bin/varnishstat"
            log(f"starting the Varnish exporter on 127.0.0.1:{port}")
            self.spawn("edge-exporter", [VARNISH_EXPORTER, "-n", str(self.part("edge") / "work"),
                                         "-varnishstat-path", varnishstat,
                                         "-web.listen-address", f"127.0.0.1:{port}"],
                       env=self.monitoring_env(), cwd=self.monitoring_dir)
        wait_for("Varnish exporter", lambda: http_status(f"http://127.0.0.1:{port}/metrics") == 200, timeout=30,
                 log_file=self.logs / "edge-exporter.log")

    def statsd_bridge_up(self) -> None:
        """collectd's statsd plugin (UDP, loopback) and write_prometheus (HTTP, loopback): Airflow's
        StatsD to Prometheus; the names are mapped by relabelling in prometheus.yml."""
        conf = self.monitoring_dir / "collectd.conf"
        template = (REPO / "stack" / "prometheus" / "collectd.conf").read_text()
        conf.write_text(template.replace("{{DIR}}", str(self.monitoring_dir))
                        .replace("{{STATSD_PORT}}", str(self.ports["statsd"]))
                        .replace("{{PROMETHEUS_PORT}}", str(self.ports["statsd_bridge"]))
                        # twice the scrape interval: a timer's mean of one interval (NaN in the
                        # next) is then scraped at least once even when a scrape comes late
                        .replace("{{INTERVAL}}", str(2 * SCRAPE_INTERVAL_S)))
        if self.pid("statsd-bridge") is None:
            log(f"starting the StatsD bridge (collectd): UDP 127.0.0.1:{self.ports['statsd']}")
            self.spawn("statsd-bridge", [COLLECTD, "-f", "-C", str(conf)], env=self.monitoring_env(),
                       cwd=self.monitoring_dir)
        wait_for("StatsD bridge (collectd)", lambda: http_status(self.monitoring_urls()["statsd_bridge"]) == 200,
                 timeout=30, log_file=self.logs / "statsd-bridge.log")

    def prometheus_config(self) -> Path:
        """prometheus.yml rendered from stack/prometheus/ (ports filled), the rules beside it."""
        folder = self.monitoring_dir / "prometheus"
        folder.mkdir(exist_ok=True)
        p = self.ports
        template = (REPO / "stack" / "prometheus" / "prometheus.yml").read_text()
        for key, value in {"SCRAPE_INTERVAL": f"{SCRAPE_INTERVAL_S}s", "PROMETHEUS_PORT": p["prometheus"],
                           "PG_EXPORTER_PRIMARY_PORT": p["pg_exporter_primary"],
                           "PG_EXPORTER_REPLICA_PORT": p["pg_exporter_replica"],
                           "EDGE_EXPORTER_PORT": p["edge_exporter"], "STATSD_BRIDGE_PORT": p["statsd_bridge"]}.items():
            template = template.replace("{{" + key + "}}", str(value))
        # the Redis job (between its markers) only under Celery, where the broker runs
        head, _, rest = template.partition("  # >>> celery\n")
        job, _, tail = rest.partition("  # <<< celery\n")
        if self.executor == "celery":
            job = job.replace("{{REDIS_EXPORTER_PORT}}", str(p["redis_exporter"]))
        template = head + (job if self.executor == "celery" else "") + tail
        shutil.copyfile(REPO / "stack" / "prometheus" / "alerts.rules.yml", folder / "alerts.rules.yml")
        config = folder / "prometheus.yml"
        config.write_text(template)
        return config

    def prometheus_up(self) -> None:
        config = self.prometheus_config()
        port = self.ports["prometheus"]
        pid = self.pid("prometheus")
        if pid is None:
            data = self.monitoring_dir / "prometheus" / "data"
            data.mkdir(exist_ok=True)
            log(f"starting Prometheus on 127.0.0.1:{port}")
            self.spawn("prometheus", [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                      "--storage.tsdb.retention.time=7d", f"--web.listen-address=127.0.0.1:{port}",
                                      f"--web.external-url=http://127.0.0.1:{port}/"],
                       env=self.monitoring_env(), cwd=self.monitoring_dir)
        else:
            os.kill(pid, signal.SIGHUP)  # rereads prometheus.yml and the rules (both rendered anew above)
        wait_for("Prometheus", lambda: http_status(f"http://127.0.0.1:{port}/-/ready") == 200, timeout=60,
                 log_file=self.logs / "prometheus.log")
        log(f"Prometheus: http://127.0.0.1:{port}/ (targets, alerts); Grafana's files in stack/grafana/")

    def monitoring_up(self) -> None:
        """Everything monitoring needs, on a stack whose database and edge are up: the metrics role, the
        exporters, the StatsD bridge, Prometheus. Airflow, if running without StatsD, is restarted."""
        self.monitoring_config()
        self.monitoring_dir.mkdir(mode=0o700, exist_ok=True)
        self.pg_metrics_role()
        self.statsd_bridge_up()
        for server in ("primary", "replica"):
            self.pg_exporter_up(server)
        self.edge_exporter_up()
        if self.executor == "celery" and self.pid("redis") is not None:
            self.redis_exporter_up()
        self.prometheus_up()
        # the scheduler's environment tells (the api-server's is overwritten by its process title)
        wanted = f"AIRFLOW__METRICS__STATSD_PORT={self.ports['statsd']}".encode()
        if self.pid("airflow-scheduler") is not None and wanted not in process_environ(self.pid("airflow-scheduler")):
            log("Airflow runs without StatsD: restarting it with the metrics settings")
            self.stop_airflow()
            self.write_env()
            self.airflow_up()

    # -- the CeleryExecutor: Redis as the broker, two workers (issue 16) -------------------
    @property
    def executor(self) -> str:
        """``local`` or ``celery``: the executor Airflow runs with (kept in ``stack.json``)."""
        return self.config.get("executor", "local")

    def use_executor(self, name: str) -> None:
        """Choose Airflow's executor (``local`` | ``celery``) for this stack; Celery's ports and the
        Redis password are chosen once. Takes effect at the next ``airflow_up``."""
        if name not in EXECUTORS:
            raise StackError(f"executor: expected one of {', '.join(EXECUTORS)}, got {name!r}")
        cfg = self.ensure_config()
        ports, values = cfg["ports"], cfg["secrets"]
        changed = cfg.get("executor", "local") != name
        cfg["executor"] = name
        if name == "celery":
            for port_name in ("redis", "redis_exporter"):
                changed = choose_port(ports, port_name) or changed
            if "redis" not in values:
                values["redis"] = secrets.token_urlsafe(18)
                changed = True
        if changed:
            write_private(self.config_path, json.dumps(cfg, indent=2))

    def airflow_services(self) -> tuple[str, ...]:
        """Airflow's processes under the chosen executor (the workers only under Celery)."""
        return (*AIRFLOW_SERVICES, *CELERY_WORKERS) if self.executor == "celery" else AIRFLOW_SERVICES

    def redis_url(self, db: int = 0) -> str:
        return f"redis://:{self.secrets['redis']}@127.0.0.1:{self.ports['redis']}/{db}"

    def redis_up(self) -> None:
        """Redis on loopback with a password (from a 0600 config file, never the command line); no
        snapshots: the broker's messages are the scheduler's to resend (Airflow requeues what it lost)."""
        folder = self.state / "redis"
        folder.mkdir(mode=0o700, exist_ok=True)
        port = self.ports["redis"]
        write_private(folder / "redis.conf", "\n".join([
            "# Written by scripts/devstack.py (`up` rewrites it).",
            "bind 127.0.0.1", f"port {port}", "protected-mode yes", f"dir {folder}", "daemonize no",
            'save ""', "appendonly no", "loglevel notice", 'logfile ""', "databases 4",
            f"requirepass {self.secrets['redis']}", ""]))
        if self.pid("redis") is None:
            log(f"starting Redis (the Celery broker) on 127.0.0.1:{port}")
            self.spawn("redis", [REDIS_SERVER, str(folder / "redis.conf")], env=self.monitoring_env(), cwd=folder)
        wait_for("Redis", lambda: self.redis_ping() == b"+PONG", timeout=30, log_file=self.logs / "redis.log")

    def redis_ping(self) -> bytes:
        """AUTH + PING over a socket (no client library before the virtualenv)."""
        with socket.create_connection(("127.0.0.1", self.ports["redis"]), timeout=2) as sock:
            password = self.secrets["redis"].encode()
            sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password))
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n")[1]

    def workers_up(self) -> None:
        """Two Celery workers, each in its own process group with its own Celery node name and the
        host name Airflow records for its tasks (``CSL_WORKER_NAME``, ``[core] hostname_callable``);
        no log server (it would listen on every interface): the api-server reads the task logs from
        the shared log folder."""
        airflow = str(VENV_BIN / "airflow")
        for number, service in enumerate(CELERY_WORKERS, start=1):
            if self.pid(service) is not None:
                continue
            name = f"csl-worker-{number}"
            env = {**self.airflow_process_env(), "CSL_WORKER_NAME": name}
            log_path = self.logs / f"{service}.log"
            offset = log_path.stat().st_size if log_path.exists() else 0
            log(f"starting {service} (Celery node {name}, {CELERY_CONCURRENCY} slots)")
            self.spawn(service, [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h",
                                 "--concurrency", str(CELERY_CONCURRENCY), "--skip-serve-logs"],
                       env=env, cwd=self.airflow_home)

            def ready(path: Path = log_path, start: int = offset, pid_name: str = service) -> bool:
                if self.pid(pid_name) is None:
                    raise StackError(f"{pid_name} exited; see {path}")
                with path.open("rb") as handle:
                    handle.seek(start)
                    return b" ready." in handle.read()

            wait_for(f"{service} (Celery)", ready, timeout=120, interval=0.5, log_file=log_path)

    def redis_exporter_up(self) -> None:
        port = self.ports["redis_exporter"]
        if self.pid("redis-exporter") is None:
            log(f"starting the Redis exporter on 127.0.0.1:{port}")
            env = self.monitoring_env(REDIS_ADDR=f"redis://127.0.0.1:{self.ports['redis']}",
                                      REDIS_PASSWORD=self.secrets["redis"])
            # the broker's queue: its length is the Celery backlog (redis_key_size{key="default"})
            self.spawn("redis-exporter", [REDIS_EXPORTER, "-web.listen-address", f"127.0.0.1:{port}",
                                          "-check-single-keys", "db0=default"],
                       env=env, cwd=self.monitoring_dir)
        wait_for("Redis exporter", lambda: http_status(f"http://127.0.0.1:{port}/metrics") == 200, timeout=30,
                 log_file=self.logs / "redis-exporter.log")

    # -- the environment the platform and Airflow read -------------------------------------
    def urls(self) -> dict:
        s, p = self.secrets, self.ports
        return {
            "primary": f"postgresql://csl:{s['pg_csl']}@127.0.0.1:{p['pg_primary']}/{PLATFORM_DB}",
            "replica": f"postgresql://csl:{s['pg_csl']}@127.0.0.1:{p['pg_replica']}/{PLATFORM_DB}",
            "airflow_db": f"postgresql+psycopg2://airflow:{s['pg_airflow']}@127.0.0.1:{p['pg_primary']}/airflow",
            "s3_primary": f"http://127.0.0.1:{p['s3-primary.s3']}",
            "s3_fallback": f"http://127.0.0.1:{p['s3-fallback.s3']}",
            "edge": f"http://127.0.0.1:{p['edge']}",
            "airflow": f"http://127.0.0.1:{p['airflow_api']}",
            MOTO: f"http://127.0.0.1:{p[MOTO]}",
        }

    def env_values(self) -> dict:
        s, u = self.secrets, self.urls()
        values = {
            # the platform's own names
            "DATABASE_URL": u["primary"],
            "DATABASE_READ_REPLICA_URL": u["replica"],
            "STORAGE_PROVIDER": "minio",
            "STORAGE_FALLBACK_PROVIDER": "s3",
            "MINIO_ENDPOINT": u["s3_primary"],
            "MINIO_ACCESS_KEY": s["s3_primary_key"],
            "MINIO_SECRET_KEY": s["s3_primary_secret"],
            "MINIO_BUCKET": AUDIO_BUCKET,
            "MINIO_FORCE_PATH_STYLE": "true",
            "MINIO_PUBLIC_BUCKET": "true",
            "MINIO_PUBLISHED_BUCKET": PUBLISHED_BUCKET,
            "S3_ENDPOINT": u["s3_fallback"],
            "S3_BUCKET": FALLBACK_BUCKET,
            "S3_LISTING_ORDER": "path",  # served by SeaweedFS, which lists folder by folder (AWS: byte order)
            "AWS_ACCESS_KEY_ID": s["s3_fallback_key"],
            "AWS_SECRET_ACCESS_KEY": s["s3_fallback_secret"],
            "AWS_REGION": "us-east-1",
            "CDN_ENABLED": "true",
            "CDN_PROVIDER": "varnish",
            "CDN_BASE_URL": u["edge"],
            "CDN_CACHE_TTL": "86400",
            "CDN_VARNISH_WORK_DIR": str(self.edge_work_dir()),
            # for clients only (scripts/demo.py, the tests): kept out of airflow_process_env()
            "CSL_AIRFLOW_ADMIN_PASSWORD": s["airflow_admin"],
            # Airflow connections (the DAGs read only these)
            "AIRFLOW_CONN_CSL_DB": u["primary"],
            "AIRFLOW_CONN_CSL_DB_REPLICA": u["replica"],
            "AIRFLOW_CONN_CSL_STORAGE_PRIMARY": json.dumps({
                "conn_type": "aws", "login": s["s3_primary_key"], "password": s["s3_primary_secret"],
                "extra": {"endpoint_url": u["s3_primary"], "region_name": "us-east-1", "bucket": AUDIO_BUCKET,
                          "provider": "minio", "force_path_style": True, "public_bucket": True,
                          "published_bucket": PUBLISHED_BUCKET}}),
            "AIRFLOW_CONN_CSL_STORAGE_FALLBACK": json.dumps({
                "conn_type": "aws", "login": s["s3_fallback_key"], "password": s["s3_fallback_secret"],
                "extra": {"endpoint_url": u["s3_fallback"], "region_name": "us-east-1", "bucket": FALLBACK_BUCKET,
                          "provider": "s3", "force_path_style": True, "listing_order": "path"}}),
            "AIRFLOW_CONN_CSL_CDN_EDGE": json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": self.ports["edge"], "schema": "http",
                "extra": {"provider": "varnish", "cache_ttl": 86400, "work_dir": str(self.edge_work_dir())}}),
        }
        values.update(self.airflow_env())
        return values

    def write_env(self) -> None:
        lines = ["# Written by scripts/devstack.py: the local stack's settings. Secrets: keep out of git."]
        for key, value in self.env_values().items():
            if "'" in value:
                raise StackError(f"{key}: value contains a single quote")
            lines.append(f"{key}='{value}'")
        write_private(self.env_file, "\n".join(lines) + "\n")

    # -- Airflow ---------------------------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    def airflow_env(self) -> dict:
        s, p = self.secrets, self.ports
        api = f"http://127.0.0.1:{p['airflow_api']}"
        return {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__FERNET_KEY": s["airflow_fernet"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.airflow_home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.urls()["airflow_db"],
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(p["airflow_api"]),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": s["airflow_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["airflow_jwt"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            **self.airflow_metrics_env(),
            **self.celery_env(),
        }

    def celery_env(self) -> dict:
        """The CeleryExecutor's settings (under ``--executor celery`` only): Redis as the broker, the
        results in the Airflow database, each worker's host name from ``CSL_WORKER_NAME``. A task
        whose worker died (no heartbeat for 60 s) is failed and retried by the scheduler; a message
        a dead worker had taken is resent after the broker's visibility timeout."""
        if self.executor != "celery":
            return {}
        return {
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url(0),
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.urls()["airflow_db"].replace("+psycopg2", ""),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_CONCURRENCY),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "csl_airflow.hostname.worker_hostname",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        }

    def airflow_process_env(self) -> dict:
        """The environment of Airflow's processes (and so of every task): the stack's settings
        without the client-only secrets, also when the calling shell has them exported."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(self.env_values())
        for key in CLIENT_ONLY_ENV:
            env.pop(key, None)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_airflow_passwords(self) -> Path:
        """The simple auth manager's passwords file (the api-server reads the admin's from it)."""
        self.airflow_home.mkdir(exist_ok=True)
        path = self.airflow_home / "passwords.json"
        write_private(path, json.dumps({"admin": self.secrets["airflow_admin"]}))
        return path

    def airflow_up(self) -> None:
        home = self.airflow_home
        self.write_airflow_passwords()
        env = self.airflow_process_env()
        airflow = str(VENV_BIN / "airflow")
        marker = home / ".migrated"
        pools = REPO / "stack" / "airflow" / "pools.json"
        version = subprocess.run([airflow, "version"], env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
        wanted = f"{version} {hashlib.sha256(pools.read_bytes()).hexdigest()[:12]}"
        if not marker.exists() or marker.read_text() != wanted:
            log(f"airflow db migrate + pools (Airflow {version}, metadata in PostgreSQL)")
            with private_log(self.logs / "airflow-migrate.log").open("ab") as out:
                subprocess.run([airflow, "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT,
                               check=True)
                subprocess.run([airflow, "pools", "import", str(pools)], env=env, stdout=out,
                               stderr=subprocess.STDOUT, check=True)
            marker.write_text(wanted)
        # Airflow imports plugins once at start and forks parsers/workers from there: a change to
        # plugins/ or include/csl/ needs fresh processes, or tasks would run yesterday's code.
        code_marker = home / ".code-hash"
        code = code_hash()
        if code_marker.exists() and code_marker.read_text() != code and self.stop_airflow():
            log("plugins/ or include/csl/ changed: restarting Airflow")
        code_marker.write_text(code)
        # the executor the scheduler runs with is in its environment: another one needs fresh processes
        wanted = f"AIRFLOW__CORE__EXECUTOR={EXECUTORS[self.executor]}".encode()
        scheduler = self.pid("airflow-scheduler")
        if scheduler is not None and wanted not in process_environ(scheduler).split(b"\0"):
            log(f"switching Airflow to the {EXECUTORS[self.executor]}: restarting it")
            self.stop_airflow()
        if self.executor == "celery":
            self.redis_up()
        else:
            stopped = [service for service in (*CELERY_WORKERS, "redis-exporter", "redis") if self.kill_group(service)]
            if stopped:
                log(f"stopped {', '.join(stopped)} (LocalExecutor)")
                if self.pid("prometheus") is not None:
                    self.prometheus_up()  # without the Redis job
        for service in AIRFLOW_SERVICES:
            if self.pid(service) is None:
                log(f"starting {service}")
                command = [airflow, service.removeprefix("airflow-")]
                if service in ("airflow-scheduler", "airflow-triggerer"):
                    command.append("--skip-serve-logs")  # its log server would listen on every interface
                self.spawn(service, command, env=env, cwd=home)
        health_url = f"{self.urls()['airflow']}/api/v2/monitor/health"

        def healthy() -> bool:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                body = json.loads(response.read())
            return all(body.get(part, {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

        wait_for("Airflow (api-server, scheduler, dag-processor, triggerer)", healthy, timeout=180,
                 interval=1, log_file=self.logs / "airflow-api-server.log")
        if self.executor == "celery":
            self.workers_up()
            if self.config.get("monitoring") and self.pid("prometheus") is not None:
                self.redis_exporter_up()
                self.prometheus_up()  # the Redis job joins the scrape configuration

    def stop_airflow(self) -> bool:
        """Stop every Airflow process (workers first); True when one was running."""
        stopped = False
        for service in reversed((*AIRFLOW_SERVICES, *CELERY_WORKERS)):
            stopped = self.kill_group(service) or stopped
        return stopped

    # -- the whole stack -------------------------------------------------------------------
    def up(self, *, airflow: bool, moto: bool = False, monitoring: bool = False, executor: str | None = None) -> None:
        self.ensure_config()
        if executor is not None:
            self.use_executor(executor)
        self.pg_primary_up()
        self.pg_replica_up()
        for service in S3_SERVICES:
            self.s3_up(service)
        self.write_env()
        self.buckets_up()
        self.edge_up()
        if moto:
            self.moto_up()
        if monitoring:
            self.monitoring_up()
        if airflow:
            self.airflow_up()

    def start(self, name: str) -> None:
        self.load_config()
        if name in (*MONITORING_SERVICES, "redis-exporter"):
            return self.monitoring_up()
        {"pg-primary": self.pg_primary_up, "pg-replica": self.pg_replica_up, "edge": self.edge_up,
         "redis": self.redis_up,
         "s3-primary": lambda: self.s3_up("s3-primary"), "s3-fallback": lambda: self.s3_up("s3-fallback"),
         MOTO: self.moto_up}.get(name, self.airflow_up)()

    def stop(self, name: str) -> bool:
        self.load_config()
        if name in ("pg-primary", "pg-replica"):
            return self.pg_stop(name)
        return self.kill_group(name)

    def down(self) -> None:
        if not self.load_config():
            log(f"nothing to stop: no stack in {self.state}")
            return
        for name in reversed(ALL_SERVICES):  # Airflow first, the database last
            if self.stop(name):
                log(f"stopped {name}")

    def status(self) -> dict:
        self.load_config()
        return {name: {"pid": self.pid(name), "running": self.pid(name) is not None} for name in ALL_SERVICES}


WEED_LISTENERS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc",
                  "webdav", "admin", "admin_grpc", "debug")
EDGE_REFERER_REGEX = r"^https?://(localhost|127\.0\.0\.1|([a-z0-9-]+\.)*culturalsoundlab\.com)(:[0-9]+)?(/|$)"

PRIMARY_CONF = """
# --- csl devstack ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket}'
max_connections = 200
shared_buffers = 256MB
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
track_io_timing = on
track_activity_query_size = 4096
wal_level = replica
max_wal_senders = 10
wal_keep_size = 512MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
log_line_prefix = '%m [%p] %q%u@%d '
log_lock_waits = on
"""

PG_HBA = """# Written by scripts/devstack.py (`up` rewrites it). The Unix socket: only the OS user the
# server runs as, as the superuser postgres (pg_ident.conf); loopback TCP: passwords (SCRAM).
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 peer map=devstack
local   replication  all                 peer map=devstack
host    all          all   127.0.0.1/32  scram-sha-256
host    replication  all   127.0.0.1/32  scram-sha-256
"""

PG_IDENT = """# Written by scripts/devstack.py (`up` rewrites it).
# MAPNAME  SYSTEM-USERNAME  PG-USERNAME
devstack   {os_user}  postgres
"""


def code_hash() -> str:
    digest = hashlib.sha256()
    for folder in (REPO / "plugins", REPO / "include" / "csl"):
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_environ(pid: int | None) -> bytes:
    """A process's environment as the kernel holds it (empty when it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes() if pid else b""
    except OSError:
        return b""


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "remove", "status", "start", "stop", "env"),
                        help="remove: down, then delete the state folder and what it keeps outside it")
    parser.add_argument("service", nargs="?", choices=ALL_SERVICES)
    parser.add_argument("--state", type=Path, default=REPO / ".local" / "stack")
    parser.add_argument("--env-file", type=Path, default=REPO / ".env")
    parser.add_argument("--airflow", action="store_true", help="with up: also start Airflow")
    parser.add_argument("--monitoring", action="store_true",
                        help="with up: also start Prometheus, the exporters and the StatsD bridge (Airflow's metrics)")
    parser.add_argument("--executor", choices=tuple(EXECUTORS),
                        help="with up: Airflow's executor, kept until changed (celery: Redis and two workers)")
    parser.add_argument("--moto", action="store_true",
                        help="with up: also start moto's S3 server (byte-order listings; the tests' third provider)")
    args = parser.parse_args(argv)
    stack = Stack(args.state, args.env_file)
    try:
        if args.command == "up":
            stack.up(airflow=args.airflow, moto=args.moto, monitoring=args.monitoring, executor=args.executor)
            log(f"stack up; settings in {stack.env_file}")
        elif args.command in ("down", "remove"):
            stack.down()
            if args.command == "remove":
                remove_state(stack.state)
                log(f"removed {stack.state}")
        elif args.command == "status":
            print(json.dumps(stack.status(), indent=2))
        elif args.command == "env":
            stack.load_config()
            for key, value in stack.env_values().items():
                print(f"{key}='{value}'")
        elif args.service is None:
            parser.error(f"{args.command} needs a service name")
        elif args.command == "start":
            stack.start(args.service)
        else:
            stack.stop(args.service)
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else ""
        # no secret is on a command line or in our SQL; redacting the text is the second fence
        print(stack.redact(f"[devstack] error: {exc}{(': ' + detail) if detail else ''}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
