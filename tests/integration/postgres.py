"""A throwaway PostgreSQL server for tests: the MLflow backend a cluster uses, started from Debian's binaries.

Why not a Docker container: CI has no Docker engine. Why not SQLAlchemy against SQLite only: a study must log to
MLflow on PostgreSQL exactly as it does to the embedded SQLite server, and only a real server shows that.

The server lives in its own temporary directory (data, unix socket, log), listens on a free loopback port, and
is stopped and deleted by `stop()`. `initdb` refuses to run as root, so as root every PostgreSQL binary runs as
the `postgres` OS user (`runuser -u postgres --`); as any other user it runs as that user. Passwords are random
per server, so no credential is written down anywhere.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run `sudo docker/ci-install-postgres.sh` "
    "(apt-get install postgresql) or put a PostgreSQL bin/ folder on PATH"
)


def find_postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and psql: Debian keeps it off PATH, in /usr/lib/postgresql/<major>/bin."""
    tools = ("initdb", "pg_ctl", "psql")
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    on_path = shutil.which("initdb")
    if on_path:  # may be a symlink into the versioned folder: resolve it, since psql must sit next to it
        candidates.append(Path(on_path).resolve().parent)
    candidates = [c for c in candidates if all((c / tool).exists() for tool in tools)]
    if not candidates:
        return None
    return max(candidates, key=lambda c: int(c.parent.name) if c.parent.name.isdigit() else 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL server: `with PostgresServer() as pg: url = pg.create_database("mlflow")`."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_postgres_bin()
        if found is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.bin_dir = found
        self.as_root = os.geteuid() == 0
        self.port = free_port()
        self.root: Path | None = None
        self.started = False

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    # -- running binaries --------------------------------------------------------------------------------------
    def _run(self, tool: str, *args: str, input_text: str | None = None) -> str:
        command = [str(self.bin_dir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.root and self.log_file.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one statement; returns its rows unaligned (`-At`), e.g. "2" for a count."""
        # Over the unix socket as the superuser: local connections use trust auth (the socket dir is private).
        return self._run("psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql).strip()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        # Not pytest's tmp_path: its parent is 0700 root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="aaclip-pg-"))
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        # Local socket: trust (only the owner can reach the private socket dir). TCP: scram passwords, as on a
        # real server, so the MLflow URI carries credentials the way a cluster's does.
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--encoding=UTF8", "--locale=C",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # a throwaway: speed over safety
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60",
                  "start")
        self.started = True
        return self

    def create_database(self, name: str, user: str | None = None) -> str:
        """A database owned by a new role with a random password; returns its SQLAlchemy URL.

        The driver is named (`+psycopg2`): SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which the
        `cluster` extra does not install.
        """
        user = user or name
        password = secrets.token_hex(16)
        self.psql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE \"{name}\" OWNER \"{user}\"")
        return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30", "stop")
            finally:
                self.started = False
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll until `url` answers 200; fail early (with the reason) if the serving process exits."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
