"""Helpers of the bad-input suites: run a CLI's main() in this process, and prove nothing was written.

One interpreter serves every case (a subprocess per case would pay the 10-20 s import of the stack each time);
a handful of real subprocess runs in the suites prove the installed entry points behave the same.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def assert_refused(self, culprit: str) -> None:
        """Exit 2, exactly one line on stderr, `error: ...` naming the culprit, no traceback."""
        lines = self.stderr.strip().splitlines()
        assert self.code == 2, f"exit {self.code}\n{self.stdout}\n{self.stderr}"
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: ") and culprit in lines[0], lines[0]
        assert "Traceback" not in self.stderr + self.stdout


def run_main(main: Callable[[], None], argv: list[str], capsys: pytest.CaptureFixture,
             monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """main() as the console script runs it: sys.argv set, SystemExit caught, output captured."""
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() installs its own
    root_level = logging.getLogger().level
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        logging.getLogger().setLevel(root_level)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders` with its size and modification time."""
    entries: dict[str, tuple[int, int]] = {}
    for folder in folders:
        if not folder.exists():
            continue
        for path in [folder, *folder.rglob("*")]:
            status = path.lstat()
            entries[str(path)] = (status.st_size if path.is_file() else -1, status.st_mtime_ns)
    return entries


def changes(before: dict, after: dict) -> list[str]:
    return sorted({*before, *after} - {key for key in before if before.get(key) == after.get(key)})


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A real PNG whose header declares side x side grey pixels (10 billion at the default): a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def truncate(path: Path) -> Path:
    """Keep the header, drop the second half of the pixel data: opens, fails to decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    os.utime(path)
    return path
