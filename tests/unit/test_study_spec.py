"""Study specs: every shipped spec validates; every bad spec fails up front with one line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aaclip.config import CONFIG_DIR
from study.errors import StudyError
from study.spec import SPEC_DIR, load_study, parse_study, planned_epochs

GOOD = {
    "name": "unit",
    "base": "tiny",
    "objective": {"metric": "val/pixel_auroc", "mode": "max"},
    "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
    "trials": {"num_samples": 3},
}


def spec_with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data.update(changes)
    return data


def refused(data: dict) -> str:
    with pytest.raises(StudyError) as caught:
        parse_study(data, source="spec.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_smoke_spec_loads_with_its_shipped_defaults():
    study = load_study("smoke")
    assert study.name == "smoke"
    assert study.num_samples() == 6
    assert study.base_config.model.name == "aaclip-tiny"
    assert study.baseline_config().cross_attention.enabled is False


@pytest.mark.parametrize("name", ["feedback-scale", "ablation-scale"])
def test_real_specs_parse_and_validate(name):
    if not (CONFIG_DIR / "vit-l-14-336.yaml").is_file():
        pytest.skip("aaclip/configs/vit-l-14-336.yaml is not shipped yet")
    study = load_study(SPEC_DIR / f"{name}.yaml")
    assert study.spec.trials.resources.gpu > 0
    assert study.base_config.model.name == "ViT-L-14-336"


def test_ablation_grid_has_seven_scales_times_three_seeds():
    data = yaml.safe_load((SPEC_DIR / "ablation-scale.yaml").read_text())
    data["base"] = "tiny"
    data["overrides"] = {}
    data["trials"]["resources"] = {"cpu": 1, "gpu": 0}  # tiny pins model.device: cpu
    study = parse_study(data, source="ablation")
    points = study.space.grid_points()
    assert len(points) == 21 == study.num_samples()
    learnable = [p for p in points if p["cross_attention.image_scale.learnable"]]
    assert len(learnable) == 3 and all("cross_attention.image_scale.init" not in p for p in learnable)
    point = next(p for p in points if p.get("cross_attention.image_scale.init") == 0.05)
    config = study.trial_config(study.space.expand(point))
    assert config.cross_attention.text_scale.init == config.cross_attention.image_scale.init == 0.05


@pytest.mark.parametrize("change, key", [
    ({"scheduler": {"kind": "asha", "grace": 1}}, "scheduler.grace"),
    ({"colour": "blue"}, "colour"),
    ({"space": {"optim.image_rate": {"uniform": [0.1, 0.2]}}}, "space.optim.image_rate"),
    ({"overrides": {"optim.image_rate": 0.1}}, "overrides.optim.image_rate"),
    ({"space": {"optim.image_lr": {"uniform": [0.2, 0.1]}}}, "space.optim.image_lr"),
    ({"space": {"optim.image_lr": {"uniform": [0.1, 0.1]}}}, "space.optim.image_lr"),
    ({"space": {"optim.image_lr": {"loguniform": [0.0, 0.1]}}}, "space.optim.image_lr"),
    ({"space": {"optim.image_lr": {"choice": []}}}, "space.optim.image_lr"),
    ({"space": {"optim.image_lr": {"uniform": [0.1, 0.2], "int": [1, 2]}}}, "space.optim.image_lr"),
    ({"objective": {"metric": "val/pixel_f1", "mode": "max"}}, "objective.metric"),
    ({"objective": {"metric": "val/pixel_auroc", "mode": "up"}}, "objective.mode"),
    ({"trials": {"resources": {"gpu": -1}}}, "trials.resources.gpu"),
    ({"space": {"seed": {"grid": [1, 2]}}}, "space.seed"),
    ({"name": "has space"}, "name"),
    ({"trials": {"resources": {"cpu": 1, "gpu": 1}}}, "trials.resources.gpu"),  # tiny pins model.device: cpu
    ({"overrides": {"model.device": "cuda"}}, "trials.resources.gpu"),
    ({"confirm": {"top_k": -1}}, "confirm.top_k"),
    ({"confirm": {"top_k": 2, "seeds": 1}}, "confirm.seeds"),
    ({"confirm": {"top": 2}}, "confirm.top"),
])
def test_bad_spec_names_the_key(change, key):
    message = refused(spec_with(**change))
    assert message.startswith("spec.yaml: ") and key in message, message


def test_validation_data_equal_to_test_data_is_refused():
    same = {"kind": "synthetic", "domain": "object", "seed": 1}
    message = refused(spec_with(overrides={"data.val": same, "data.test": same}))
    assert "data.val" in message and "test" in message


def test_a_range_that_leaves_the_schema_is_refused_before_any_trial():
    message = refused(spec_with(space={"cross_attention.dropout": {"uniform": [0.0, 1.5]}}))
    assert "cross_attention.dropout" in message


def test_condition_must_refer_to_an_earlier_key_and_a_possible_value():
    late = {"optim.image_lr": {"loguniform": [1e-4, 1e-2], "when": {"cross_attention.image_scale.learnable": True}},
            "cross_attention.image_scale.learnable": {"choice": [False, True]}}
    assert "must be a space key listed before" in refused(spec_with(space=late))
    impossible = {"cross_attention.image_scale.learnable": {"choice": [False]},
                  "optim.image_lr": {"loguniform": [1e-4, 1e-2],
                                     "when": {"cross_attention.image_scale.learnable": True}}}
    assert "never takes the value" in refused(spec_with(space=impossible))


def test_a_missing_spec_file_names_the_shipped_ones():
    with pytest.raises(StudyError, match="smoke"):
        load_study("no-such-spec")


def test_spec_file_overrides_and_names(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec_with(overrides={"feedback.loops": 1})))
    study = load_study(path, name="renamed", num_samples=5)
    assert (study.name, study.num_samples(), study.base_config.feedback.loops) == ("renamed", 5, 1)


def test_smoke_test_shrinks_the_study():
    study = load_study("smoke", smoke_test=True)
    assert study.name == "smoke-smoke" or study.name.endswith("-smoke")
    assert study.num_samples() == 2
    assert study.base_config.feedback.loops == 1
    assert planned_epochs(study.base_config) == 2


def test_baseline_gets_the_largest_budget_in_the_space():
    study = parse_study(spec_with(space={"feedback.loops": {"int": [1, 3]}}), source="spec.yaml")
    baseline = study.baseline_config()
    assert baseline.feedback.loops == 3 and baseline.cross_attention.enabled is False
    assert study.max_time() == 3


@pytest.mark.parametrize("path", sorted(SPEC_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_spec_confirms_its_winners(path):
    confirm = yaml.safe_load(path.read_text())["confirm"]
    assert confirm["top_k"] >= 1 and confirm["seeds"] >= 2


def test_confirmation_is_off_unless_asked_and_smoke_sized_by_smoke_test():
    assert parse_study(spec_with(), source="spec.yaml").spec.confirm.top_k == 0
    study = load_study("smoke", smoke_test=True)
    assert (study.spec.confirm.top_k, study.spec.confirm.seeds) == (1, 2)
    assert load_study("smoke", confirm_top_k=0).spec.confirm.top_k == 0  # --confirm-top-k 0: the search only
