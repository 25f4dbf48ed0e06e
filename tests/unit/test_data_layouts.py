"""The layout readers on generated trees in the real MVTec and VisA layouts, the jsonl round trip, kind: synthetic."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from aaclip.config import DatasetSpec
from aaclip.data import class_names, load_records, synthetic_root, write_jsonl
from aaclip.prompts import SYNTHETIC_DOMAINS

TEXTURES = sorted(SYNTHETIC_DOMAINS["texture"])


def counts(records) -> Counter:
    return Counter((record.class_name, record.label) for record in records)


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_test_split_has_every_class_label_and_mask(make_synthetic, layout):
    root = make_synthetic(layout=layout, normal=3, anomalous=4)
    records = load_records(DatasetSpec(kind=layout, root=str(root)))

    assert class_names(records) == TEXTURES
    assert counts(records) == {(name, label): n for name in TEXTURES for label, n in ((0, 3), (1, 4))}
    assert records == sorted(records, key=lambda record: (record.class_name, record.image_id))
    for record in records:
        assert record.image_path.is_absolute()
        assert record.image_id == record.image_path.relative_to(root).as_posix()
        assert record.image_id.startswith(f"{record.class_name}/")
        assert (record.mask_path is None) == (record.label == 0)
        if record.mask_path is not None:
            with Image.open(record.image_path) as image, Image.open(record.mask_path) as mask:
                assert mask.size == image.size
                assert mask.getextrema()[1] == 255  # the defect is drawn in the mask


def test_mvtec_masks_pair_by_defect_folder_and_stem(make_synthetic):
    root = make_synthetic(layout="mvtec")
    for record in load_records(DatasetSpec(kind="mvtec", root=str(root))):
        class_name, split, defect, file_name = record.image_id.split("/")
        assert split == "test"
        if record.label:
            expected = root / class_name / "ground_truth" / defect / f"{Path(file_name).stem}_mask.png"
            assert record.mask_path == expected
        else:
            assert defect == "good"


def test_visa_masks_pair_by_name(make_synthetic):
    root = make_synthetic(layout="visa")
    for record in load_records(DatasetSpec(kind="visa", root=str(root))):
        folder = "Anomaly" if record.label else "Normal"
        assert record.image_path.parent == root / record.class_name / "Data" / "Images" / folder
        if record.label:
            assert record.mask_path == root / record.class_name / "Data/Masks/Anomaly" / f"{record.image_path.stem}.png"


def test_visa_split_file_has_the_real_header(make_synthetic):
    root = make_synthetic(layout="visa")
    lines = (root / "split_csv" / "1cls.csv").read_text().splitlines()
    assert lines[0] == "object,split,label,image,mask"
    assert {line.split(",")[2] for line in lines[1:]} == {"normal", "anomaly"}


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_train_split_has_only_normal_images(make_synthetic, layout):
    root = make_synthetic(layout=layout, normal=2, anomalous=3)
    records = load_records(DatasetSpec(kind=layout, root=str(root), split="train"))
    assert counts(records) == {(name, 0): 2 for name in TEXTURES}


def test_categories_keep_only_those_classes(make_synthetic):
    root = make_synthetic()
    records = load_records(DatasetSpec(kind="mvtec", root=str(root), categories=["weave", "planks"]))
    assert class_names(records) == ["planks", "weave"]


def test_jsonl_reads_back_what_write_jsonl_wrote(make_synthetic):
    root = make_synthetic(layout="visa")
    records = load_records(DatasetSpec(kind="visa", root=str(root)))
    out = write_jsonl(root, records, root / "test.jsonl")

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(("mask_path" in row) == (row["label"] == 1) for row in rows)
    assert not any(Path(row["image_path"]).is_absolute() for row in rows)
    assert load_records(DatasetSpec(kind="jsonl", root=str(root))) == records
    assert load_records(DatasetSpec(kind="jsonl", root=str(out))) == records  # root may name the file itself


def test_jsonl_accepts_float_labels_and_blank_lines(make_synthetic):
    root = make_synthetic(normal=1, anomalous=1)
    records = load_records(DatasetSpec(kind="mvtec", root=str(root), categories=["weave"]))
    normal, anomalous = sorted(records, key=lambda record: record.label)
    lines = [
        {"image_path": normal.image_id, "label": 0.0, "class_name": "weave"},
        {"image_path": anomalous.image_id, "label": 1.0, "class_name": "weave",
         "mask_path": anomalous.mask_path.relative_to(root).as_posix()},
    ]
    (root / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert load_records(DatasetSpec(kind="jsonl", root=str(root))) == records


def test_synthetic_kind_generates_under_aaclip_home_once(aaclip_home):
    spec = DatasetSpec(kind="synthetic", domain="object", seed=3, categories=["ring"])
    records = load_records(spec)

    root = synthetic_root("object", 3)
    assert root.parent.parent == aaclip_home.resolve()
    assert class_names(records) == ["ring"]
    assert counts(records) == {("ring", 0): 10, ("ring", 1): 10}
    assert all(record.image_path.is_relative_to(root) for record in records)
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    assert load_records(spec) == records
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before


def test_synthetic_kind_reads_a_generated_visa_root(make_synthetic):
    root = make_synthetic(layout="visa", domain="object", seed=4)
    records = load_records(DatasetSpec(kind="synthetic", domain="object", seed=4, root=str(root)))
    assert records == load_records(DatasetSpec(kind="visa", root=str(root)))


def test_image_ids_stay_relative_through_a_symlinked_class_folder(make_synthetic, tmp_path):
    source = make_synthetic(name="elsewhere")
    root = tmp_path / "linked"
    root.mkdir()
    (root / "weave").symlink_to(source / "weave", target_is_directory=True)
    records = load_records(DatasetSpec(kind="mvtec", root=str(root)))
    assert records and all(record.image_id.startswith("weave/test/") for record in records)
    assert all(record.image_path.is_relative_to(root) for record in records)
