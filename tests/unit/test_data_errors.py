"""Bad input: each problem is a DataError whose message names the culprit (file, line, root or value)."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from aaclip.config import DatasetSpec
from aaclip.data import AnomalyDataset, load_records
from aaclip.errors import DataError


@pytest.fixture
def root(make_synthetic):
    return make_synthetic(normal=2, anomalous=2, size=32)


def mvtec(root, **fields) -> DatasetSpec:
    return DatasetSpec(kind="mvtec", root=str(root), **fields)


def first_anomalous(root):
    return next(record for record in load_records(mvtec(root)) if record.label == 1)


def raises_naming(culprit, *more: str):
    return pytest.raises(DataError, match=re.escape(str(culprit)) + "".join(f".*{re.escape(str(m))}" for m in more))


def test_missing_root(tmp_path):
    with raises_naming(tmp_path / "nowhere", "not found"):
        load_records(mvtec(tmp_path / "nowhere"))


def test_unknown_category_lists_the_available_ones(root):
    with raises_naming("marble", "granite, planks, weave"):
        load_records(mvtec(root, categories=["weave", "marble"]))


def test_unknown_split(root):
    with raises_naming("'val'"):
        load_records(mvtec(root, split="val"))


def test_empty_root(tmp_path):
    with raises_naming(tmp_path, "no test images"):
        load_records(mvtec(tmp_path))


def test_anomalous_image_without_mask_file(root):
    record = first_anomalous(root)
    record.mask_path.unlink()
    with raises_naming(record.mask_path, "mask not found", record.image_path):
        load_records(mvtec(root))


def test_anomalous_jsonl_row_without_mask_path(root):
    record = first_anomalous(root)
    row = {"image_path": record.image_id, "label": 1, "class_name": record.class_name}
    (root / "test.jsonl").write_text(json.dumps(row) + "\n")
    with raises_naming(record.image_path, "no mask"):
        load_records(DatasetSpec(kind="jsonl", root=str(root)))


def test_mask_of_the_wrong_size(root):
    record = first_anomalous(root)
    Image.new("L", (31, 32)).save(record.mask_path)
    with raises_naming(record.mask_path, "31x32", "32x32"):
        load_records(mvtec(root))


def test_garbage_image_fails_when_loading_records(root):
    record = first_anomalous(root)
    record.image_path.write_bytes(b"this is not a png")
    with raises_naming(record.image_path, "cannot read image"):
        load_records(mvtec(root))


def test_truncated_image_fails_when_decoded(root):
    records = load_records(mvtec(root))
    index = next(i for i, record in enumerate(records) if record.label == 1)
    data = records[index].image_path.read_bytes()
    records[index].image_path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    dataset = AnomalyDataset(load_records(mvtec(root)), 32, "none")  # the cheap header check still passes
    with raises_naming(records[index].image_path, "cannot decode image"):
        dataset[index]


def test_corrupt_mask_fails_when_decoded(root):
    records = load_records(mvtec(root))
    index = next(i for i, record in enumerate(records) if record.label == 1)
    data = records[index].mask_path.read_bytes()
    records[index].mask_path.write_bytes(data[: len(data) // 2])
    with raises_naming(records[index].mask_path, "cannot decode mask"):
        AnomalyDataset(records, 32, "none")[index]


def test_malformed_jsonl_line_is_named_by_number(root):
    good = json.dumps({"image_path": "weave/test/good/000.png", "label": 0, "class_name": "weave"})
    (root / "test.jsonl").write_text(good + "\n" + '{"image_path": "weave/test/good/001.png", "label": \n')
    with raises_naming(root / "test.jsonl", ":2:", "not valid JSON"):
        load_records(DatasetSpec(kind="jsonl", root=str(root)))


@pytest.mark.parametrize("row", [
    {"image_path": "weave/test/good/000.png", "label": 2, "class_name": "weave"},
    {"image_path": "weave/test/good/000.png", "label": 0},
    ["weave/test/good/000.png", 0, "weave"],
])
def test_jsonl_row_with_bad_fields_is_named_by_number(root, row):
    (root / "test.jsonl").write_text("\n" + json.dumps(row) + "\n")
    with raises_naming(root / "test.jsonl", ":2:"):
        load_records(DatasetSpec(kind="jsonl", root=str(root)))


def test_missing_jsonl_file(root):
    with raises_naming(root / "train.jsonl", "not found"):
        load_records(DatasetSpec(kind="jsonl", root=str(root), split="train"))


def test_visa_without_split_file(make_synthetic):
    root = make_synthetic(layout="visa")
    (root / "split_csv" / "1cls.csv").unlink()
    with raises_naming(root / "split_csv" / "1cls.csv", "not found"):
        load_records(DatasetSpec(kind="visa", root=str(root)))


def test_visa_bad_label_is_named_by_line(make_synthetic):
    root = make_synthetic(layout="visa")
    split_file = root / "split_csv" / "1cls.csv"
    lines = split_file.read_text().splitlines()
    lines[3] = lines[3].replace(",normal,", ",fine,")
    split_file.write_text("\n".join(lines) + "\n")
    with raises_naming(split_file, ":4:", "'fine'"):
        load_records(DatasetSpec(kind="visa", root=str(root), split="train"))


def test_visa_unknown_split_lists_the_splits(make_synthetic):
    root = make_synthetic(layout="visa")
    with raises_naming("'val'", "test, train"):
        load_records(DatasetSpec(kind="visa", root=str(root), split="val"))


def test_mvtec_root_that_is_a_file(tmp_path):
    (tmp_path / "data.txt").write_text("")
    with raises_naming(tmp_path / "data.txt", "must be a folder"):
        load_records(mvtec(tmp_path / "data.txt"))


def test_synthetic_root_that_is_not_generated(tmp_path):
    (tmp_path / "mine").mkdir()
    with raises_naming(tmp_path / "mine", "not a complete synthetic dataset"):
        load_records(DatasetSpec(kind="synthetic", domain="texture", root=str(tmp_path / "mine")))
