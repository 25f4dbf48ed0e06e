"""A tracking server that answers /health but not its API is refused at once, with one line (exit 2).

The servers here are real HTTP servers on loopback that misbehave on purpose: one returns 503 for every API
call, one never answers an API call.
"""
from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from study.errors import StudyError
from aaclip.mlflow_env import CLIENT_SETTINGS
from study.server import require_api
from tests.unit.test_study_cli import home, run_cli  # noqa: F401 - fixtures and helper reused


def serve(api_behaviour):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
                return
            api_behaviour(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def unavailable(handler):
    handler.send_response(503)
    handler.end_headers()


def silent(handler):
    time.sleep(30)  # holds the connection without an answer


@pytest.fixture()
def server_503():
    server = serve(unavailable)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_503_server_is_refused_by_the_cli_in_one_line(capsys, home, server_503):  # noqa: F811
    started = time.monotonic()
    code, _, err = run_cli(capsys, "status", "smoke", "--tracking-uri", server_503)
    assert code == 2 and err.count("\n") == 1
    assert "HTTP 503" in err and server_503 in err
    assert time.monotonic() - started < 30


def test_silent_server_is_refused_within_the_timeout():
    server = serve(silent)
    try:
        started = time.monotonic()
        with pytest.raises(StudyError, match="does not answer within 1 s"):
            require_api(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=1.0)
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()


def test_study_processes_run_mlflow_without_telemetry_and_with_bounded_requests():
    import study  # noqa: F401 - applies the settings on import

    for name, value in CLIENT_SETTINGS.items():
        assert os.environ.get(name) is not None, name
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    from mlflow.telemetry.utils import is_telemetry_disabled

    assert is_telemetry_disabled()
