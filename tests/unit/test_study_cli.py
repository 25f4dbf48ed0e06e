"""The CLI refuses bad input with one line and exit code 2, before anything starts or is written."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from study.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("AACLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "home"


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("run", "resume", "status", "export", "report"):
        assert command in out


@pytest.mark.parametrize("change, key", [
    ({"space": {"optim.image_rate": {"uniform": [0.1, 0.2]}}}, "optim.image_rate"),
    ({"space": {"optim.image_lr": {"loguniform": [0.0, 0.1]}}}, "optim.image_lr"),
    ({"objective": {"metric": "val/accuracy", "mode": "max"}}, "objective.metric"),
    ({"typo_key": 1}, "typo_key"),
    ({"objective": {"metric": "val/no-such-class/pixel_auroc", "mode": "max"}}, "no-such-class"),
])
def test_bad_spec_fails_with_one_line_and_starts_nothing(capsys, home, tmp_path, change, key):
    spec = {"name": "bad", "base": "tiny", "space": {"optim.image_lr": {"loguniform": [1e-4, 1e-2]}}, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and key in err
    assert not (home / "mlflow").exists() and not (home / "ray_results").exists()


def test_missing_spec_and_bad_option_exit_2(capsys, home):
    code, _, err = run_cli(capsys, "run", "no-such-spec.yaml")
    assert code == 2 and err.startswith("error: ")
    code, _, _ = run_cli(capsys, "run", "smoke", "--num-samples", "0")
    assert code == 2


def test_unreachable_tracking_server_is_one_line(capsys, home):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run_cli(capsys, "status", "smoke", "--tracking-uri", f"http://127.0.0.1:{port}")
    assert code == 2 and "does not answer" in err and err.count("\n") == 1
