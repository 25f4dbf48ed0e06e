"""Usage mistakes (typer's own checks) read like every other refusal: one line naming the culprit, exit 2."""
from __future__ import annotations

import pytest

from aaclip import cli as aaclip_cli
from study import cli as study_cli

CASES = [
    (aaclip_cli.main, ["train", "tiny", "--bogus"], "--bogus"),
    (aaclip_cli.main, ["evaluate"], "Missing argument 'config'"),
    (aaclip_cli.main, ["data", "synth", "/tmp/never-written", "--seed", "abc"], "'--seed'"),
    (aaclip_cli.main, ["nosuch"], "No such command 'nosuch'"),
    (study_cli.main, ["run", "--nope"], "--nope"),
    (study_cli.main, ["status"], "Missing argument 'name'"),
    (study_cli.main, ["export", "smoke"], "'-o'"),
]


@pytest.mark.parametrize(("main", "argv", "culprit"), CASES, ids=[" ".join(case[1]) for case in CASES])
def test_usage_mistakes_are_one_line_and_exit_2(main, argv, culprit, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exited.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_help_still_prints_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        aaclip_cli.main(["train", "--help"])
    assert exited.value.code == 0 and "--out" in capsys.readouterr().out
