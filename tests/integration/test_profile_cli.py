"""`aaclip profile` as a user runs it: per-stage step time and peak memory, the largest batch within --memory."""
from __future__ import annotations

import json
from pathlib import Path

from aaclip.config import TrainConfig
from tests.integration.test_cli import aaclip


def test_profile_prints_both_stages_as_json(tiny_config: TrainConfig, tmp_path: Path, aaclip_home: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config.to_yaml())
    result = aaclip("profile", str(config), "--memory", "8", "--repeats", "1", "--json", home=aaclip_home)
    report = json.loads(result.stdout)
    assert [stage["stage"] for stage in report["stages"]] == ["stage1-text", "stage2-image"]
    for stage in report["stages"]:
        assert stage["step_s"] > 0 and stage["peak_bytes"] > 0 and stage["memory_kind"] == "cpu-rss"
        assert stage["largest_batch"] >= stage["batch"]  # a tiny model's batch of 6 fits in 8 GB
    assert report["gpu_fraction"] is None  # no GPU here: nothing to size


def test_profile_refuses_a_memory_limit_that_is_not_positive(tmp_path: Path, aaclip_home: Path) -> None:
    result = aaclip("profile", "tiny", "--memory", "0", home=aaclip_home, check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--memory" in result.stderr
