"""TrainConfig: YAML in and out, dotted overrides, flattening, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aaclip.config import apply_overrides, config_keys, flatten, load_config, parse_override, validate_config
from aaclip.errors import ConfigError
from tests.flat_configs import unflatten


def test_shipped_configs_validate_and_round_trip(tmp_path: Path) -> None:
    for name in ("tiny", "vit-l-14-336"):
        config = load_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(config.to_yaml())
        assert load_config(path) == config


def test_flatten_unflatten_round_trip() -> None:
    config = load_config("tiny")
    flat = flatten(config.to_dict())
    assert flat["optim.image_lr"] == config.optim.image_lr
    assert flat["cross_attention.image_scale.learnable"] is False
    assert validate_config(unflatten(flat)) == config
    assert set(flat) <= config_keys()


def test_overrides_are_typed_and_validated() -> None:
    key, value = parse_override("optim.image_lr=1e-3")
    assert (key, value) == ("optim.image_lr", 0.001)
    config = load_config("tiny", {key: value, "cross_attention.image_scale.learnable": True})
    assert config.optim.image_lr == 0.001 and config.cross_attention.image_scale.learnable


@pytest.mark.parametrize("overrides, culprit", [
    ({"optim.imag_lr": 1e-3}, "optim.imag_lr: unknown key"),
    ({"optim.image_lr": -1.0}, "optim.image_lr"),
    ({"adapters.levels": [3, 2]}, "adapters.levels"),
    ({"feedback.loops": 0}, "feedback.loops"),
    ({"data.test": {"kind": "synthetic", "domain": "object", "seed": 0}}, "data"),
])
def test_bad_values_name_the_key(overrides: dict, culprit: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config("tiny", overrides)
    assert culprit in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_key_in_a_file_names_file_and_key(tmp_path: Path) -> None:
    data = load_config("tiny").to_dict()
    data["model"]["nmae"] = "x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: model.nmae: unknown key"):
        load_config(path)


def test_missing_config_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="seed.x: seed is not a section"):
        apply_overrides({"seed": 1}, {"seed.x": 2})


def test_relative_paths_resolve_against_a_base_and_tags_stay(tmp_path: Path) -> None:
    from aaclip.config import resolve_relative_paths

    data = load_config("vit-l-14-336", {"init.text_adapter": "base/text_adapter.pth"}).to_dict()
    resolved = resolve_relative_paths(data, tmp_path)
    assert resolved["data"]["train"]["root"] == str(tmp_path / "data/VisA_20220922")
    assert resolved["init"]["text_adapter"] == str(tmp_path / "base/text_adapter.pth")
    assert resolved["model"]["pretrained"] == "openai"
    local = resolve_relative_paths({"model": {"pretrained": "weights/ViT-L-14-336px.pt"}}, tmp_path)
    assert local["model"]["pretrained"] == str(tmp_path / "weights/ViT-L-14-336px.pt")


def test_path_fields_are_the_schema_fields_marked_as_paths(tmp_path: Path) -> None:
    """Every path a config holds is marked in the schema, so resolve_relative_paths cannot miss a new one."""
    from aaclip.config import path_fields, resolve_relative_paths

    assert set(path_fields()) == {"data.train.root", "data.val.root", "data.test.root", "init.text_adapter",
                                  "init.image_adapter", "cache.dir", "model.pretrained"}
    assert [key for key, marker in path_fields().items() if marker.or_tag] == ["model.pretrained"]
    resolved = resolve_relative_paths({"cache": {"dir": "features"}, "data": {"val": {"root": "val"}}}, tmp_path)
    assert resolved == {"cache": {"dir": str(tmp_path / "features")}, "data": {"val": {"root": str(tmp_path / "val")}}}
