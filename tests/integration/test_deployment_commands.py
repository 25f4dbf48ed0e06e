"""Every command line in compose, the Ray cluster config, the KubeRay manifest and the cluster guide names a real
subcommand of an installed CLI with flags that its `--help` lists. Integration: it runs each CLI's `--help`
(aaclip-study, aaclip, ray, mlflow, optuna-dashboard), which imports their heavy dependencies.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment_files import PROGRAMS, command_lines, compose_raw, guide_text, ray_cluster, rayjob, tokenize

SHELL_FENCES = {"", "bash", "sh", "shell", "console"}


def guide_blocks() -> tuple[list[str], str]:
    """The shell code blocks of the guide, and the prose outside every code block."""
    blocks: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    body: list[str] = []
    for line in guide_text().splitlines():
        marker = re.match(r"^\s*```\s*([\w-]*)\s*$", line)
        if marker and fence is None:
            fence, body = marker.group(1), []
        elif marker:
            if fence in SHELL_FENCES:
                blocks.append("\n".join(body))
            fence = None
        elif fence is None:
            prose.append(line)
        else:
            body.append(line)
    assert fence is None, "README-cluster.md: a code block is not closed"
    return blocks, "\n".join(prose)


def lines_in(text: str) -> Iterator[list[str]]:
    """Command lines in a shell text, including those inside quoted scripts (`sh -c "..."`, a Ray job)."""
    tokens = tokenize(text)
    yield from command_lines(tokens)
    for token in tokens:
        if any(character.isspace() for character in token):
            yield from lines_in(token)


def guide_code_lines() -> Iterator[str]:
    blocks, prose = guide_blocks()
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*\$\s", "", line)
            if line.strip() and not line.lstrip().startswith("#"):
                yield line
    # Inline commands in the prose (`aaclip train best.yaml --out runs/best`) are held to the same rule.
    for span in re.findall(r"`([^`]+)`", prose):
        words = span.split()  # an inline span may wrap onto the next line
        if words and words[0] in PROGRAMS and len(words) > 1:
            yield " ".join(words)


def collected_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, service in compose_raw()["services"].items():
        for key in ("command", "entrypoint"):
            value = service.get(key)
            # A list is one command line; its items that are scripts (sh -c "...", a job) are read too.
            text = shlex.join(str(item) for item in value) if isinstance(value, list) else value
            if text:
                found += [(f"compose {name}", line) for line in lines_in(text)]
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "setup_commands", "head_setup_commands"):
        for text in ray_cluster().get(key) or []:
            found += [(f"ray-cluster {key}", line) for line in lines_in(text)]
    found += [("rayjob entrypoint", line) for line in lines_in(rayjob()["spec"]["entrypoint"])]
    for text in guide_code_lines():
        found += [("README-cluster", line) for line in lines_in(text)]
    return found


def test_command_lines_are_found_in_every_deployment_file():
    sources = {source.split()[0] for source, line in collected_commands() if line[0] == "aaclip-study"}
    assert {"compose", "rayjob", "README-cluster"} <= sources, f"aaclip-study commands found only in {sources}"
    guide_programs = {line[0] for source, line in collected_commands() if source == "README-cluster"}
    assert {"aaclip-study", "aaclip"} <= guide_programs, "the guide must show the study and the retraining"
    guide_study = {line[1] for source, line in collected_commands()
                   if source == "README-cluster" and line[0] == "aaclip-study" and len(line) > 1}
    assert {"run", "resume", "status", "export", "report"} <= guide_study, f"the guide covers only {guide_study}"


def executable(program: str) -> str:
    found = shutil.which(program, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if not found:
        pytest.fail(f"{program} is not installed: install the package (pip install -e .[test,cluster])")
    return found


@functools.cache
def help_text(program: str, path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1", "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run([executable(program), *path, "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, f"`{program} {' '.join(path)} --help` failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def subcommands(help_output: str) -> set[str]:
    """Names listed under a 'Commands' heading (click's plain or typer's boxed help)."""
    names: set[str] = set()
    in_section = False
    for line in help_output.splitlines():
        stripped = line.strip(" │|╭╮╰╯─+-\t")
        if re.match(r"^(Commands|Observability)\b", stripped):
            in_section = True
            continue
        if in_section:
            if not stripped or re.match(r"^[A-Z][A-Za-z ]*:?$", stripped):
                in_section = bool(stripped) and "ommand" in stripped
                continue
            match = re.match(r"^([a-z][a-z0-9_-]*)(\s|$)", stripped)
            if match:
                names.add(match.group(1))
    return names


def check_command_line(line: list[str]) -> None:
    program, arguments = line[0], line[1:]
    path: list[str] = []
    for argument in arguments:
        if argument.startswith("-"):
            break
        if argument in subcommands(help_text(program, tuple(path))):
            path.append(argument)
        else:
            break
    usage = help_text(program, tuple(path))
    # Stopping at a group (`aaclip diagnose gradient`, `aaclip-study runn`) means the next word is no command.
    assert not subcommands(usage), f"`{shlex.join(line)}`: names no subcommand of {' '.join([program, *path])}"
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
    used = [argument.split("=", 1)[0] for argument in arguments if re.match(r"^--?[A-Za-z]", argument)]
    unknown = [flag for flag in used if flag not in known]
    assert not unknown, f"`{shlex.join(line)}`: {program} {' '.join(path)} has no {unknown}"


@pytest.mark.parametrize("source, line", collected_commands(),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value[:3]))
def test_command_line_names_a_real_subcommand_with_real_flags(source, line):
    check_command_line(line)


def test_command_checker_rejects_what_does_not_exist():
    # The checker itself must be able to fail: an unknown flag and an unknown subcommand are both caught.
    with pytest.raises(AssertionError, match="has no"):
        check_command_line(["ray", "start", "--head", "--no-such-flag"])
    with pytest.raises(AssertionError, match="names no subcommand"):
        check_command_line(["ray", "no-such-command", "--head"])
    with pytest.raises(AssertionError, match="names no subcommand of aaclip diagnose"):
        check_command_line(["aaclip", "diagnose", "gradient", "tiny"])
