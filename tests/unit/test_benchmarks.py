"""The benchmarks' entry point and the GPU check's CPU side. Nothing here asserts a speed (DESIGN §7): these
only check that the benchmarks list, run in their tiny modes and print what they promise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]


def run_benchmarks(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "AACLIP_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_entry_point_lists_every_benchmark(tmp_path: Path) -> None:
    listed = run_benchmarks(home=tmp_path)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(BENCHMARKS)


def test_unknown_benchmark_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_benchmarks("nope", home=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope" in result.stderr


@pytest.mark.parametrize("name", ["search", "step", "flops", "cache"])
def test_smoke_run_prints_one_json_object_with_a_ratio(name: str, tmp_path: Path) -> None:
    result = run_benchmarks(name, "--smoke", "--json", "--threads", "1", home=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["benchmark"] == name and figures["ratio"] > 0 and "goal" in figures


@pytest.mark.slow  # the throughput part starts a fit in a fresh process (imports torch and open_clip)
def test_gpu_check_parts_dry_run_on_cpu(tmp_path: Path, aaclip_home: Path) -> None:
    from benchmarks.gpu_check import run_part

    peak = run_part("peak", tmp_path, dry_run=True)
    (tmp_path / "peak.json").write_text(json.dumps(peak))
    step = run_part("step", tmp_path, dry_run=True)
    assert peak["peak_tflops"] > 0 and step["rows"][0]["mfu"] > 0 and step["rows"][0]["peak_memory_gb"] > 0
    trials = run_part("throughput", tmp_path, dry_run=True)
    assert [row["trials_per_gpu"] for row in trials["rows"]] == [1] and trials["rows"][0]["wall_s"] > 0


def test_gpu_check_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")]).returncode == 0
