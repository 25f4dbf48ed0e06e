"""The frozen-feature cache never serves a stale or foreign entry (DESIGN §9): its key names the dataset's files,
the preprocessing and the backbone's weights, and every target it serves equals a fresh computation."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from aaclip.config import TrainConfig, apply_overrides, validate_config
from aaclip.data.synthetic import generate_synthetic
from aaclip.features import cache_key
from aaclip.schedule import TEXT, StagePlan
from aaclip.session import Session, build_session

FIRST_LOOP_TEXT_STAGE = StagePlan(1, TEXT, 1)


def session_on(config: TrainConfig, train_root: Path, cache_dir: Path) -> Session:
    overrides = {"data.train": {"kind": "mvtec", "root": str(train_root)}, "cache.dir": str(cache_dir)}
    return build_session(validate_config(apply_overrides(config.to_dict(), overrides)))


def served_and_fresh(session: Session) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 targets of one epoch through the cache, and the same computed by the frozen tower."""
    served, fresh = [], []
    targets = session.stage_inputs(FIRST_LOOP_TEXT_STAGE).targets
    with torch.no_grad():
        for batch in session.data.loader(FIRST_LOOP_TEXT_STAGE, 0):
            served.append(targets(session.model, batch, session.stage_settings))
            fresh.append(session.model.frozen_targets(batch["image"]))
    return torch.cat(served), torch.cat(fresh)


def assert_served_equals_fresh(session: Session) -> None:
    served, fresh = served_and_fresh(session)
    torch.testing.assert_close(served, fresh.to(torch.float16).float(), rtol=0, atol=0)


def generate(root: Path, seed: int) -> Path:
    return generate_synthetic(root, "texture", seed, normal_per_class=2, anomalous_per_class=2, image_size=64)


def test_warm_cache_serves_exactly_a_fresh_computation(tiny_config: TrainConfig, tmp_path: Path) -> None:
    root = generate(tmp_path / "data", seed=0)
    cold = session_on(tiny_config, root, tmp_path / "cache")
    assert_served_equals_fresh(cold)
    assert cold.cache.hits == 0 and cold.cache.misses == len(cold.data.train_records)
    warm = session_on(tiny_config, root, tmp_path / "cache")
    assert_served_equals_fresh(warm)
    assert warm.cache.misses == 0 and warm.cache.hits == len(warm.data.train_records)


def test_two_datasets_with_the_same_paths_never_share_an_entry(tiny_config: TrainConfig, tmp_path: Path) -> None:
    first, second = generate(tmp_path / "a", seed=0), generate(tmp_path / "b", seed=1)
    assert sorted(p.relative_to(first) for p in first.rglob("*.png")) == \
        sorted(p.relative_to(second) for p in second.rglob("*.png"))  # same relative paths, other pixels
    served_and_fresh(session_on(tiny_config, first, tmp_path / "cache"))
    other = session_on(tiny_config, second, tmp_path / "cache")
    assert_served_equals_fresh(other)
    assert other.cache.hits == 0


def test_a_dataset_regenerated_in_place_is_not_served_stale(tiny_config: TrainConfig, tmp_path: Path) -> None:
    root = generate(tmp_path / "data", seed=0)
    served_and_fresh(session_on(tiny_config, root, tmp_path / "cache"))
    shutil.rmtree(root)
    generate(root, seed=1)
    regenerated = session_on(tiny_config, root, tmp_path / "cache")
    assert_served_equals_fresh(regenerated)
    assert regenerated.cache.hits == 0


def test_the_key_names_the_weights_not_their_name(tiny_config: TrainConfig, tmp_path: Path) -> None:
    session = build_session(tiny_config)
    tower, records = session.model.clip.visual, session.data.train_records
    before = cache_key(tiny_config, tower, records, "fp32")
    assert cache_key(tiny_config, tower, records, "fp32") == before  # stable within a run and across runs
    with torch.no_grad():
        tower.proj.add_(1e-3)  # other weights under the same model name and `pretrained` value
    assert cache_key(tiny_config, tower, records, "fp32") != before
    assert cache_key(tiny_config, tower, records, "bf16") != cache_key(tiny_config, tower, records, "fp32")
