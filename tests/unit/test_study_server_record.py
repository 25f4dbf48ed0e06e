"""The embedded server's record: `--stop` signals only its own server, and `--port` refuses a taken port."""
from __future__ import annotations

import json
import socket
import subprocess

import pytest

from study.errors import StudyError
from study.server import ensure_server, server_dir, stop_server


def test_stop_never_signals_a_process_that_is_not_this_homes_server(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])  # a recorded pid that now belongs to someone else
    try:
        (server_dir(tmp_path) / "server.json").write_text(json.dumps({"pid": stranger.pid, "port": 5999}))
        with pytest.raises(StudyError, match="not this home's MLflow server"):
            stop_server(tmp_path)
        assert stranger.poll() is None, "the stranger is alive"
        assert json.loads((server_dir(tmp_path) / "server.json").read_text())["port"] == 5999, "record kept"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_taken_port_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StudyError, match=f"--port: port {port} .* is in use"):
            ensure_server(tmp_path, port=port)
    assert not (server_dir(tmp_path) / "server.json").exists(), "nothing started, nothing recorded"


def test_trials_find_the_embedded_server_again_when_it_moves(tmp_path):
    from study.tracking import Connector

    record = server_dir(tmp_path) / "server.json"
    record.write_text(json.dumps({"pid": 1, "port": 5001}))
    connect = Connector.for_uri("http://127.0.0.1:5001", tmp_path)
    record.write_text(json.dumps({"pid": 2, "port": 5002}))  # restarted elsewhere
    assert connect().tracking_uri == "http://127.0.0.1:5002"
    elsewhere = Connector.for_uri("http://tracking.example:5000", tmp_path)  # not the embedded server
    assert elsewhere().tracking_uri == "http://tracking.example:5000"
