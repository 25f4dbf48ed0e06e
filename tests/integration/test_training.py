"""Training on the tiny backbone and real generated files: what each stage trains, bit-for-bit resume,
the loop records (loop 0 untrained, every loop's end), the feature cache, starting from base adapters, and
checkpoints that are refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aaclip.checkpoint import load_adapters
from aaclip.config import TrainConfig, apply_overrides, validate_config
from aaclip.errors import CheckpointError
from aaclip.features import FeatureCache, cached_targets
from aaclip.schedule import IMAGE, TEXT, StagePlan
from aaclip.session import build_session
from aaclip.stages import FrozenTargets, adapted_targets
from aaclip.train import Position, apply_init, fit, make_optimizer, run_epoch


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    return validate_config(apply_overrides(config.to_dict(), overrides))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("stage, trained", [(TEXT, ("text_adapter", "text_cross_attn")),
                                            (IMAGE, ("image_adapter", "image_cross_attn"))])
def test_each_stage_changes_exactly_its_parameters(tiny_config: TrainConfig, stage: int, trained: tuple) -> None:
    config = with_overrides(tiny_config, **{"cross_attention.text_scale.learnable": True,
                                            "cross_attention.image_scale.learnable": True})
    session = build_session(config)
    plan = StagePlan(loop=1, stage=stage, epochs=1)
    before = snapshot(session.model)
    run_epoch(session, plan, make_optimizer(session, plan), Position(), 0, session.data.steps_per_epoch(stage))
    after = session.model.state_dict()
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    assert changed == set(trained)
    parts = {key.split(".")[0] for key in before}
    for part in parts - set(trained):  # CLIP and the other stage's modules untouched, bit for bit
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(part + "."))


def test_stage_inputs_follow_the_feedback_loop(tiny_config: TrainConfig) -> None:
    session = build_session(with_overrides(tiny_config, **{"cross_attention.start_loop": 2}))
    first, second = (session.stage_inputs(StagePlan(loop, TEXT, 1)) for loop in (1, 2))
    assert isinstance(first.targets, FrozenTargets) and first.targets.cache is session.cache  # loop 1: frozen
    assert second.targets is adapted_targets  # later loops: the feedback from the trained image adapters
    assert not first.cross_attention and second.cross_attention
    session.model.train()
    image = session.stage_inputs(StagePlan(1, IMAGE, 1))
    assert session.model.training  # preparing the inputs (in eval mode) leaves the model's mode as it was
    assert image.text_context is None and session.stage_inputs(StagePlan(1, IMAGE, 2)) is image  # once a loop
    later = session.stage_inputs(StagePlan(2, IMAGE, 1))
    assert later.text_context.shape[0] == len(session.data.classes)
    torch.testing.assert_close(later.anchors, image.anchors)  # nothing trained in between


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in metrics.items() if not k.startswith("time/")} for metrics in history]


class Interrupted(Exception):
    pass


def interrupt_and_resume(config: TrainConfig, tmp_path: Path, at_epoch: int, on_loop=None):
    """Stop a fit right after epoch `at_epoch` (its checkpoint kept), then resume it in a fresh out_dir."""
    def stop(metrics: dict, checkpoint: Path) -> None:
        if metrics["epoch"] == at_epoch:
            shutil.copytree(checkpoint, tmp_path / "saved")
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(config, out_dir=tmp_path / "first", on_epoch=stop)
    return fit(config, out_dir=tmp_path / "second", resume=tmp_path / "saved", on_loop=on_loop)


# Epoch 2: mid Stage 2 of loop 1 (optimizer moments and the lr schedule in flight; the text optimizer saved with
# it must still be reset at loop 2). Epoch 3: the loop boundary.
@pytest.mark.parametrize("at_epoch", [2, 3])
def test_interrupted_fit_resumes_bit_for_bit(tiny_config: TrainConfig, tmp_path: Path, at_epoch: int) -> None:
    config = with_overrides(tiny_config, **{"feedback.image_epochs": 2, "eval.every": "epoch"})
    whole = fit(config, out_dir=tmp_path / "whole")
    told = []
    resumed = interrupt_and_resume(config, tmp_path, at_epoch=at_epoch, on_loop=told.append)
    assert comparable(resumed.history) == comparable(whole.history)
    # Loop 0 and the loops ended before the interruption come from the checkpoint; the resumed run reports only
    # the loops it ends itself (epoch 3 ends loop 1: its record was told before that epoch's checkpoint).
    assert resumed.loops == whole.loops and [r["loop"] for r in whole.loops] == [0, 1, 2]
    assert told == [record for record in whole.loops if record["epoch"] > at_epoch]
    final_whole, final_resumed = load_adapters(tmp_path / "whole/checkpoint"), load_adapters(
        tmp_path / "second/checkpoint")
    assert final_whole.keys() == final_resumed.keys()
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    assert (tmp_path / "whole/gallery.png").stat().st_size > 0


def test_fit_reports_the_documented_metrics(tiny_config: TrainConfig, tmp_path: Path) -> None:
    from aaclip.metric_names import REPORTED_METRICS

    result = fit(tiny_config, out_dir=tmp_path / "run")
    reported = set().union(*(m.keys() for m in result.history))
    assert {k for k in reported if k.count("/") < 2} <= REPORTED_METRICS
    last = result.metrics
    assert {"val/pixel_auroc", "val/image_auroc", "grad/image_adapter_share", "scale/image"} <= set(last)
    assert 0 < last["grad/image_adapter_share"] <= 1
    assert [m["loop"] for m in result.history] == [1, 1, 2, 2]
    assert (tmp_path / "run/metrics.json").is_file() and (tmp_path / "run/config.yaml").is_file()
    written = json.loads((tmp_path / "run/metrics.json").read_text())
    assert written["split.val.images"] == 18 and written["split.train.images"] == 18  # 3 classes x (3 + 3)
    assert len(written["split.val.fingerprint"]) == 16 and "split.test.images" not in written  # no data.test


def test_loop_zero_is_the_untrained_model_and_changes_no_trained_number(tiny_config: TrainConfig,
                                                                        tmp_path: Path) -> None:
    config = with_overrides(tiny_config, **{"cross_attention.dropout": 0.2})  # training draws from torch's RNG
    told = []
    result = fit(config, out_dir=tmp_path / "run", on_loop=told.append)
    without = fit(with_overrides(config, **{"eval.loop0": False}), out_dir=tmp_path / "without")
    # The evaluation before training forks the RNG: every epoch's numbers are the same as without it.
    assert comparable(result.history) == comparable(without.history)
    assert [(r["loop"], r["epoch"]) for r in result.loops] == [(0, 0), (1, 2), (2, 4)]
    assert [(r["loop"], r["epoch"]) for r in without.loops] == [(1, 2), (2, 4)]
    assert told == result.loops == json.loads((tmp_path / "run/loops.json").read_text())
    untrained = build_session(config).evaluate(loop=0)
    assert {k: v for k, v in result.loops[0].items() if k.startswith("val/")} == untrained
    assert result.loops[0]["scale/image"] == pytest.approx(tiny_config.cross_attention.image_scale.init)  # fp32
    for record in result.loops[1:]:  # a loop's end is its last epoch's evaluation and scales
        epoch = result.history[int(record["epoch"]) - 1]
        assert record == {k: v for k, v in epoch.items() if k in record} and "val/pixel_auroc" in record


def test_without_cross_attention_no_scale_is_reported(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = with_overrides(tiny_config, **{"cross_attention.enabled": False, "feedback.loops": 1})
    result = fit(config, out_dir=tmp_path / "run")
    reported = set().union(*(m.keys() for m in result.history + result.loops))
    assert "val/pixel_auroc" in reported and not {k for k in reported if k.startswith("scale/")}


def test_feature_cache_matches_fresh_computation(tiny_config: TrainConfig, tmp_path: Path) -> None:
    session = build_session(tiny_config)
    dataset = session.data.datasets[TEXT]
    items = [dataset[i] for i in range(4)]
    images = torch.stack([item["image"] for item in items])
    keys = [dataset.draw_key(i) for i in range(4)]
    fresh = session.model.frozen_targets(images)
    cache = FeatureCache(tmp_path / "cache", "backbone")
    first = cached_targets(cache, keys, lambda rows: session.model.frozen_targets(images[rows]))
    assert cache.misses == 4 and cache.hits == 0
    other_process = FeatureCache(tmp_path / "cache", "backbone")
    second = cached_targets(other_process, keys, lambda rows: pytest.fail("must read the cache"))
    assert other_process.hits == 4
    torch.testing.assert_close(first, fresh.to(torch.float16).float())
    assert torch.equal(first, second)


def reference_files(folder: Path, session) -> tuple[Path, Path]:
    """Checkpoints in the reference implementation's format (reference §6.2)."""
    folder.mkdir()
    text, image = folder / "text_adapter.pth", folder / "image_adapter_20.pth"
    torch.save({"epoch": 5, "text_adapter": session.model.text_adapter.state_dict(), "text_optimizer": {}}, text)
    torch.save({"epoch": 20, "image_adapter": session.model.image_adapter.state_dict()}, image)
    return text, image


def test_init_from_reference_checkpoints(tiny_config: TrainConfig, tmp_path: Path) -> None:
    donor = build_session(with_overrides(tiny_config, seed=5))
    text, image = reference_files(tmp_path / "base", donor)
    config = with_overrides(tiny_config, **{"init.text_adapter": str(text), "init.image_adapter": str(image)})
    session = build_session(config)
    apply_init(session)
    for part in ("text_adapter", "image_adapter"):
        expected = getattr(donor.model, part).state_dict()
        assert all(torch.equal(v, getattr(session.model, part).state_dict()[k]) for k, v in expected.items())


def test_refused_checkpoints(tiny_config: TrainConfig, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        fit(tiny_config, out_dir=tmp_path / "a", resume=tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "state.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint state"):
        fit(tiny_config, out_dir=tmp_path / "b", resume=junk)
    small = build_session(with_overrides(tiny_config, **{"model.name": "aaclip-small", "model.image_size": 112,
                                                         "adapters.levels": [2, 4, 6, 8]}))
    text, _ = reference_files(tmp_path / "small", small)
    config = with_overrides(tiny_config, **{"init.text_adapter": str(text)})
    with pytest.raises(CheckpointError, match="written for another architecture"):
        apply_init(build_session(config))
    not_reference = tmp_path / "weights.pth"
    torch.save({"something": torch.zeros(2)}, not_reference)
    with pytest.raises(CheckpointError, match="no 'image_adapter' entry"):
        apply_init(build_session(with_overrides(tiny_config, **{"init.image_adapter": str(not_reference)})))


def test_v2_recipe_with_carried_optimizer_resumes_bit_for_bit(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """AdamW, warmup + cosine, clipping, delayed cross-attention and optimizer state carried across loops."""
    config = with_overrides(tiny_config, **{
        "optim.kind": "adamw", "optim.weight_decay": 0.01, "optim.schedule": "cosine", "optim.warmup_epochs": 0.5,
        "optim.grad_clip": 1.0, "feedback.reset_optimizer": False, "cross_attention.start_loop": 2,
        "feedback.image_epochs": 2})
    whole = fit(config, out_dir=tmp_path / "whole")
    loop1 = [m for m in whole.history if m["loop"] == 1]
    assert all(m.get("grad/image_cross_attn", 0.0) == 0.0 for m in loop1)  # not active before start_loop
    assert any(m.get("grad/image_cross_attn", 0.0) > 0.0 for m in whole.history if m["loop"] == 2)

    resumed = interrupt_and_resume(config, tmp_path, at_epoch=5)  # loop 2, with the carried optimizer
    assert comparable(resumed.history) == comparable(whole.history)
