"""Few-shot sampling: k per class per label, seeded, independent of listing order and of other classes."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from aaclip.config import DatasetSpec
from aaclip.data import load_records
from aaclip.data.records import sample_shots


@pytest.fixture
def root(make_synthetic):
    return make_synthetic(normal=5, anomalous=5, size=16)


def spec(root, **fields) -> DatasetSpec:
    return DatasetSpec(kind="mvtec", root=str(root), **fields)


def test_k_images_per_class_per_label(root):
    records = load_records(spec(root, shots=2))
    assert Counter((record.class_name, record.label) for record in records) == {
        (name, label): 2 for name in ("granite", "planks", "weave") for label in (0, 1)}


def test_same_seed_same_sample_other_seed_other_sample(root):
    first = load_records(spec(root, shots=2, seed=0))
    assert load_records(spec(root, shots=2, seed=0)) == first
    assert load_records(spec(root, shots=2, seed=1)) != first


def test_more_shots_than_images_takes_them_all(root):
    assert load_records(spec(root, shots=50)) == load_records(spec(root))


def test_sample_ignores_listing_order(root):
    records = load_records(spec(root))
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert sample_shots(shuffled, 2, seed=3) == sample_shots(records, 2, seed=3)


def test_a_class_sample_does_not_depend_on_the_other_classes(root):
    everything = load_records(spec(root, shots=2, seed=5))
    weave_only = load_records(spec(root, shots=2, seed=5, categories=["weave"]))
    assert weave_only == [record for record in everything if record.class_name == "weave"]
