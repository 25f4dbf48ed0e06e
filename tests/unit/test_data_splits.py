"""Splits a study can trust: the seeded holdout, the val/test overlap check by resolved file, fingerprints."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from aaclip.config import DataConfig, DatasetSpec, flatten, validate_config
from aaclip.data import load_records
from aaclip.data.splits import check_disjoint, load_splits, split_fingerprint, split_summary
from aaclip.errors import DataError
from study.spec import load_study
from tests.flat_configs import unflatten

SHIPPED_SPECS = Path(__file__).parents[2] / "search_spaces"


@pytest.fixture
def root(make_synthetic):
    return make_synthetic(normal=6, anomalous=5, size=16)


def part(root: Path, name: str, fraction: float = 0.3, seed: int = 0, **fields) -> DatasetSpec:
    return DatasetSpec(kind="mvtec", root=str(root), holdout={"part": name, "fraction": fraction, "seed": seed},
                       **fields)


def groups(records) -> Counter:
    return Counter((record.class_name, record.label) for record in records)


def test_held_out_and_remainder_are_disjoint_and_cover_the_dataset(root):
    everything = load_records(DatasetSpec(kind="mvtec", root=str(root)))
    held, rest = load_records(part(root, "held_out")), load_records(part(root, "remainder"))
    assert not {r.image_id for r in held} & {r.image_id for r in rest}
    assert sorted(held + rest, key=lambda r: (r.class_name, r.image_id)) == everything
    check_disjoint(held, rest)  # the loaders' check agrees


def test_holdout_is_stratified_by_class_and_label(root):
    everything, held = groups(load_records(DatasetSpec(kind="mvtec", root=str(root)))), groups(
        load_records(part(root, "held_out", fraction=0.3)))
    assert set(held) == set(everything)  # every class, both labels
    assert held == {group: round(0.3 * size) for group, size in everything.items()}  # 6 -> 2, 5 -> 2
    extreme = groups(load_records(part(root, "remainder", fraction=0.01)))
    assert extreme == {group: size - 1 for group, size in everything.items()}  # at least one held out, never all


def test_holdout_is_seeded(root):
    first = load_records(part(root, "held_out", seed=3))
    assert load_records(part(root, "held_out", seed=3)) == first
    assert load_records(part(root, "held_out", seed=4)) != first


def test_holdout_of_a_class_does_not_depend_on_other_classes(root):
    alone = load_records(part(root, "held_out", categories=["weave"]))
    assert alone == [r for r in load_records(part(root, "held_out")) if r.class_name == "weave"]


def test_overlap_by_resolved_file_is_refused_even_through_a_link(root, tmp_path):
    link = tmp_path / "same-data"
    os.symlink(root, link)
    val = load_records(DatasetSpec(kind="mvtec", root=str(link), categories=["weave"], shots=1))
    test = load_records(DatasetSpec(kind="mvtec", root=str(root)))
    with pytest.raises(DataError) as error:
        check_disjoint(val, test, "run.yaml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("run.yaml: data.val and data.test share 2 of 2 val images")
    assert f"{os.path.realpath(root)}/weave/test/" in message


def test_load_splits_refuses_a_shots_sample_of_the_test_set(root):
    data = DataConfig(train=DatasetSpec(kind="mvtec", root=str(root)),
                      val=DatasetSpec(kind="mvtec", root=str(root), shots=2),
                      test=DatasetSpec(kind="mvtec", root=str(root)))
    with pytest.raises(DataError, match="data.val and data.test share 12 of 12 val images"):
        load_splits(data)


def test_fingerprints_name_the_images_not_the_root(root, make_synthetic):
    records = load_records(part(root, "held_out"))
    copy = make_synthetic(normal=6, anomalous=5, size=16, name="elsewhere")  # same generator, other folder
    assert split_fingerprint(load_records(part(copy, "held_out"))) == split_fingerprint(records)
    assert split_fingerprint(load_records(part(root, "remainder"))) != split_fingerprint(records)
    other_pixels = make_synthetic(normal=6, anomalous=5, size=16, seed=1)  # same ids, other images
    assert split_fingerprint(load_records(part(other_pixels, "held_out"))) != split_fingerprint(records)
    summary = split_summary({"val": records})
    assert summary == {"split.val.images": len(records), "split.val.fingerprint": split_fingerprint(records)}


def test_holdout_flows_through_flat_params_unchanged(tiny_config):
    data = {**tiny_config.to_dict()["data"],
            "val": {"kind": "mvtec", "root": "/data/mvtec", "holdout": {"part": "held_out", "fraction": 0.2}},
            "test": {"kind": "mvtec", "root": "/data/mvtec", "holdout": {"part": "remainder", "fraction": 0.2}}}
    config = validate_config(tiny_config.to_dict() | {"data": data})
    flat = flatten(config.to_dict())
    assert flat["data.val.holdout.part"] == "held_out" and flat["data.test.holdout.fraction"] == 0.2
    assert validate_config(unflatten(flat)) == config


@pytest.mark.parametrize("spec_file", ["feedback-scale.yaml", "ablation-scale.yaml"])
def test_shipped_specs_select_and_test_on_disjoint_parts(spec_file, root, monkeypatch):
    # The real specs name data/visa and data/mvtec; a generated MVTec-layout tree stands in for both.
    monkeypatch.chdir(root.parent)
    study = load_study(SHIPPED_SPECS / spec_file)
    data = study.base_config.data
    assert data.val.holdout.part == "held_out" and data.test.holdout.part == "remainder"
    stand_in = data.model_copy(update={
        name: getattr(data, name).model_copy(update={"root": str(root), "kind": "mvtec"})
        for name in ("train", "val", "test")})
    splits = load_splits(stand_in)
    assert len(splits["val"]) + len(splits["test"]) == len(load_records(DatasetSpec(kind="mvtec", root=str(root))))
