"""The `aaclip` command line, run as a user runs it: a subprocess, real files, exit codes, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aaclip.config import TrainConfig


def aaclip(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "AACLIP_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "aaclip", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"aaclip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def config_file(tiny_config: TrainConfig, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config.to_yaml())
    return path


def test_train_then_evaluate(config_file: Path, tmp_path: Path, aaclip_home: Path) -> None:
    out = tmp_path / "run"
    result = aaclip("train", str(config_file), "--out", str(out), "--set", "feedback.loops=1", home=aaclip_home)
    assert "loop 1 image epoch 1" in result.stdout and "val pixel AUROC" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("start (untrained): val pixel AUROC") and lines[1].startswith("loop 1 text")
    metrics = json.loads((out / "metrics.json").read_text())
    loops = json.loads((out / "loops.json").read_text())
    assert [record["loop"] for record in loops] == [0, 1] and loops[1]["val/pixel_auroc"] == metrics["val/pixel_auroc"]
    assert yaml.safe_load((out / "config.yaml").read_text())["feedback"]["loops"] == 1
    evaluated = aaclip("evaluate", str(config_file), "--checkpoint", str(out / "checkpoint"), "--json",
                       "--set", "feedback.loops=1", home=aaclip_home)
    again = json.loads(evaluated.stdout)
    assert again["val/pixel_auroc"] == pytest.approx(metrics["val/pixel_auroc"], abs=1e-6)


@pytest.mark.parametrize("args, culprit", [
    (["train", "tiny", "--set", "optim.imag_lr=1"], "optim.imag_lr: unknown key"),
    (["train", "tiny", "--set", "optim.image_lr=-1"], "optim.image_lr"),
    (["train", "no-such-config"], "no-such-config: no such config"),
    (["evaluate", "tiny", "--checkpoint", "/nonexistent"], "/nonexistent: not a checkpoint"),
    (["train", "tiny", "--set", "data.train.root=/nonexistent/mvtec", "--set", "data.train.kind=mvtec"],
     "/nonexistent/mvtec"),
])
def test_user_mistakes_exit_2_with_one_line(args: list[str], culprit: str, aaclip_home: Path) -> None:
    result = aaclip(*args, home=aaclip_home, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], result.stderr


def test_diagnose_gradients_reproduces_the_dilution(config_file: Path, aaclip_home: Path) -> None:
    result = aaclip("diagnose", "gradients", str(config_file), "--compare", "--context-norm", "17", "--json",
                    home=aaclip_home)
    reports = {report["variant"]: report for report in json.loads(result.stdout)}
    assert reports["unscaled"]["ratio"] < 0.8 and reports["unscaled"]["verdict"] == "CAUTION"
    assert reports["scaled-0.1"]["ratio"] > 0.8 and reports["complete-fix"]["ratio"] > 0.8
    # Same seed, batch and weights: the without-cross-attention norm is one number for all three.
    assert len({round(r["without_cross_attention"], 6) for r in reports.values()}) == 1


def test_data_synth_writes_a_visa_layout(tmp_path: Path, aaclip_home: Path) -> None:
    aaclip("data", "synth", str(tmp_path / "visa"), "--layout", "visa", "--domain", "object", "--images", "2",
           home=aaclip_home)
    assert (tmp_path / "visa/split_csv/1cls.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "visa/disc/Data/Images").iterdir()) == ["Anomaly", "Normal"]


@pytest.mark.parametrize("args", [
    ["train", "{config}", "--out", "{run}", "--test"],  # plain `train` reads the splits the same way
    ["evaluate", "{config}", "--checkpoint", "{run}/checkpoint", "--split", "test"],
])
def test_val_that_shares_images_with_test_is_refused(args: list[str], tiny_config: TrainConfig, tiny_data,
                                                     tmp_path: Path, aaclip_home: Path) -> None:
    """val is a shots sample of the test set: different configs, the same image files."""
    config = tiny_config.model_copy(update={"data": tiny_config.data.model_copy(update={
        "val": tiny_config.data.val.model_copy(update={"shots": 1}),
        "test": tiny_config.data.val})})
    path, run = tmp_path / "leaky.yaml", tmp_path / "run"
    path.write_text(config.to_yaml())
    result = aaclip(*(arg.format(config=path, run=run) for arg in args), home=aaclip_home, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.val and data.test share 6 of 6 val images" in lines[0], result.stderr
    assert f"(e.g. {tiny_data['object'].resolve()}/" in lines[0]
    assert not run.exists()  # refused before anything is written
