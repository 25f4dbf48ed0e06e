"""The gallery is picked as batches pass: the first anomalous image of each of the first six classes."""
from __future__ import annotations

import numpy as np
import torch

from aaclip.evaluate import GALLERY_IMAGES, GalleryPicker, class_runs


def offer(picker: GalleryPicker, name: str, labels: list[int], first_value: float) -> None:
    count = len(labels)
    images = torch.arange(count, dtype=torch.float32)[:, None, None, None].expand(count, 3, 2, 2) + first_value
    picker.offer(name, images, np.zeros((count, 2, 2), dtype=bool), np.zeros((count, 2, 2)), np.array(labels))


def test_first_anomalous_image_per_class_else_the_first_image():
    names = [f"class{index}" for index in range(GALLERY_IMAGES + 2)]
    picker = GalleryPicker(names)
    offer(picker, "class0", [0, 0], first_value=0)  # no anomalous image yet: the first image stands in
    offer(picker, "class0", [0, 1, 1], first_value=10)  # the first anomalous one replaces it
    offer(picker, "class0", [1], first_value=20)  # later anomalous images do not
    offer(picker, "class1", [0], first_value=30)  # a class without anomalies keeps its first image
    offer(picker, "class1", [0], first_value=40)
    offer(picker, names[-1], [1], first_value=50)  # beyond the first six classes: not drawn
    rows = picker.in_order()
    assert [float(row.image[0, 0, 0]) for row in rows] == [11.0, 30.0]
    assert [row.anomalous for row in rows] == [True, False]


def test_class_runs_split_a_batch_by_class():
    assert class_runs(["a", "a", "b", "c", "c"]) == [("a", slice(0, 2)), ("b", slice(2, 3)), ("c", slice(3, 5))]
    assert class_runs(["a"]) == [("a", slice(0, 1))]
