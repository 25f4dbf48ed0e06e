"""The embedded tracking server: a local `mlflow server` on loopback, started once and reused (DESIGN §6).

Without a tracking URI, every `aaclip-study` command talks to one server whose SQLite store and artifacts live
under $AACLIP_HOME/mlflow. Its address is kept in server.json next to them; a command reuses a server that
still answers /health, and starts a new one (detached, so it outlives the command and the UI stays open)
otherwise. A lock file keeps two commands started together from starting two servers.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from aaclip.home import aaclip_home
from aaclip.mlflow_env import client_settings, is_healthy
from study.errors import StudyError
from study.locks import file_lock

HOST = "127.0.0.1"
PREFERRED_PORT = 5000
START_TIMEOUT_S = 120.0  # MLflow 3.17 answers /health after about 20-27 s on 2 cores (DESIGN §8)


@dataclass
class ServerInfo:
    pid: int
    port: int
    host: str = HOST

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"


def server_dir(home: Path | None = None) -> Path:
    folder = (home or aaclip_home()) / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def resolve_tracking_uri(explicit: str | None = None, spec_uri: str | None = None, *,
                         start: bool = True, echo=print) -> str:
    """--tracking-uri, else the spec's tracking.uri, else $MLFLOW_TRACKING_URI, else the embedded server."""
    for uri in (explicit, spec_uri, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri:
            if uri.startswith(("http://", "https://")):
                if not is_healthy(uri, timeout_s=10.0):
                    raise StudyError(f"tracking server {uri} does not answer {uri.rstrip('/')}/health; start it, "
                                     "or leave --tracking-uri and MLFLOW_TRACKING_URI unset for the local server")
                require_api(uri)
            return uri
    info = running_server()
    if info is None:
        if not start:
            raise StudyError("no tracking server: pass --tracking-uri, set MLFLOW_TRACKING_URI, "
                             "or run a study first (it starts the embedded server)")
        echo(f"starting the local MLflow server (store: {server_dir()}; takes ~20 s) ...")
        info = ensure_server()
    return info.uri


def ensure_server(home: Path | None = None, timeout_s: float = START_TIMEOUT_S,
                  preferred_port: int | None = PREFERRED_PORT, port: int | None = None) -> ServerInfo:
    """The embedded server: reused when alive, started otherwise.

    It comes back on the port it had (kept in server.json after a stop), so printed links and running trials
    keep working; `port` asks for one port (refused if taken); preferred_port None: any free port.
    """
    folder = server_dir(home)
    with file_lock(folder / "server.lock"):
        info = running_server(home)
        if info is not None:
            if port and info.port != port:
                raise StudyError(f"the local MLflow server already runs at {info.uri} (pid {info.pid}); stop it "
                                 f"first (`aaclip-study server --stop`) to move it to port {port}")
            return info
        if port and not _port_free(port):
            raise StudyError(f"--port: port {port} on {HOST} is in use; choose another")
        previous = _read_state(folder)
        port = port or _pick_port(previous.port if previous else None, preferred_port)
        process = _spawn(folder, port)
        info = ServerInfo(pid=process.pid, port=port)
        _wait_healthy(info, process, folder / "server.log", timeout_s)
        (folder / "server.json").write_text(json.dumps(asdict(info)))
        return info


def running_server(home: Path | None = None) -> ServerInfo | None:
    info = _read_state(server_dir(home))
    if info is not None and _alive(info.pid) and is_healthy(info.uri):
        return info
    return None


def current_uri(home: Path, default: str | None) -> str | None:
    """Where this home's embedded server was last started (its record), else default."""
    info = _read_state(Path(home) / "mlflow")
    return info.uri if info else default


def stop_server(home: Path | None = None) -> bool:
    """Stop the embedded server of this home (tests, `aaclip-study server --stop`); True if one was running.

    Only a process verified to be this home's server is signalled (a recorded pid may have been reused).
    The record stays: the next start takes the same port.
    """
    folder = server_dir(home)
    info = _read_state(folder)
    if info is None or not _alive(info.pid):
        return False
    if not _is_our_server(info.pid, folder):
        raise StudyError(f"{folder / 'server.json'}: pid {info.pid} is not this home's MLflow server any more; "
                         "nothing was signalled")
    os.killpg(info.pid, signal.SIGTERM)  # the server runs in its own session: its workers go with it
    for _ in range(100):
        if not _alive(info.pid):
            break
        time.sleep(0.1)
    return True


def _is_our_server(pid: int, folder: Path) -> bool:
    """The process runs `mlflow server` on this folder's store (its command line says so)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [word.decode(errors="replace") for word in command]
    return "mlflow" in words and "server" in words and f"sqlite:///{folder / 'mlflow.db'}" in words


API_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def require_api(uri: str, timeout_s: float = 10.0) -> None:
    """One tracking API request, once, with a bounded wait: /health alone passes a server whose store is broken.

    Sends the credentials a trial would (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN); a 404 (no Default
    experiment) is a healthy answer.
    """
    request = urllib.request.Request(f"{uri.rstrip('/')}{API_PROBE}", headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return
        if error.code in (401, 403):
            raise StudyError(f"tracking server {uri} refused the credentials (HTTP {error.code}); check "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        raise StudyError(f"tracking server {uri} answers /health but its API fails (HTTP {error.code}); "
                         "check the server's log") from None
    except (OSError, ValueError) as error:  # refused, reset, timed out
        reason = getattr(error, "reason", error)
        raise StudyError(f"tracking server {uri} answers /health but its API does not answer within "
                         f"{timeout_s:.0f} s ({reason}); check the server") from None


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _spawn(folder: Path, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
    ]
    # No job runner process: faster start, nothing left behind (DESIGN §8).
    env = {**os.environ, **client_settings(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - handed to the detached child
    try:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=folder, start_new_session=True)
    finally:
        log.close()


def _wait_healthy(info: ServerInfo, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise StudyError(f"the local MLflow server exited with code {process.returncode}: {tail[0]} "
                             f"(full log: {log})")
        if is_healthy(info.uri):
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise StudyError(f"the local MLflow server did not answer {info.uri}/health within {timeout_s:.0f} s "
                     f"(log: {log})")


def _pick_port(previous: int | None, preferred: int | None) -> int:
    """The previous port (links printed earlier keep working), else 5000, else any free loopback port."""
    for port in (previous, preferred):
        if port and _port_free(port):
            return port
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    """Nothing listens there. SO_REUSEADDR as the server's own socket has: a port whose last connections are
    in TIME_WAIT (a server just stopped) is free for it, and must read as free here."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def _read_state(folder: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads((folder / "server.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:  # reap it first if it is our own exited child, or it would look alive as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
