"""Streamed metrics (aaclip.streamed_metrics) against the exact ones on the same data (aaclip.metrics, sklearn)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip import losses, metrics
from aaclip.streamed_metrics import ClassStream, StreamedMetrics

LOW, HIGH = losses.anomaly_map_bounds(4)


def class_data(seed: int, images: int = 20, size: int = 64) -> tuple[np.ndarray, ...]:
    """Maps near the middle of the range (as a trained model's are), rectangles as defects, half anomalous."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    for index in range(images // 2):
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 10, 2)
            height, width = rng.integers(2, 12, 2)
            masks[index, top:top + height, left:left + width] = True
    maps = rng.normal(200.0, 3.0, masks.shape) + masks * rng.normal(2.0, 2.0, masks.shape)
    return maps.astype(np.float32), masks, rng.random(images), masks.reshape(images, -1).any(axis=1).astype(int)


def streamed(maps, masks, raw, labels, batch: int = 6, aupro: bool = True) -> dict[str, float]:
    stream = ClassStream(LOW, HIGH, aupro=aupro)
    for start in range(0, len(maps), batch):
        rows = slice(start, start + batch)
        stream.add(maps[rows], masks[rows], raw[rows], labels[rows])
    return stream.metrics(mix=0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_metrics_match_the_exact_ones(seed: int):
    maps, masks, raw, labels = class_data(seed)
    exact = metrics.class_metrics(maps, masks, raw, labels, mix=0.5)
    got = streamed(maps, masks, raw, labels)
    assert got.keys() == exact.keys()
    assert got["pixel_auroc"] == pytest.approx(exact["pixel_auroc"], abs=1e-3)
    assert got["pixel_ap"] == pytest.approx(exact["pixel_ap"], abs=2e-3)
    assert got["image_auroc"] == exact["image_auroc"] and got["image_ap"] == exact["image_ap"]  # no binning
    # pixel_aupro integrates over a 200-threshold grid; with 5,000 it is within ~1e-4 of the exact curve.
    assert got["pixel_aupro"] == pytest.approx(metrics.pixel_aupro(maps, masks, thresholds=5000), abs=2e-3)


def test_pixel_auroc_and_ap_are_sklearn_exactly_on_the_binned_scores():
    maps, masks, raw, labels = class_data(2)
    bins = ClassStream(LOW, HIGH).bin_of(maps).ravel()
    got = streamed(maps, masks, raw, labels, aupro=False)
    assert got["pixel_auroc"] == pytest.approx(100 * roc_auc_score(masks.ravel(), bins), abs=1e-9)
    assert got["pixel_ap"] == pytest.approx(100 * average_precision_score(masks.ravel(), bins), abs=1e-9)
    assert "pixel_aupro" not in got


def test_batch_boundaries_do_not_change_the_result():
    data = class_data(3, images=9)
    assert streamed(*data, batch=1) == streamed(*data, batch=4) == streamed(*data, batch=9)


def test_hand_case_and_undefined_metrics():
    # aaclip.metrics' hand case shifted into the range: AUROC 5/9, AP 13/18 (tests/unit/test_metrics.py).
    maps = np.array([[[0.9, 0.8, 0.1]], [[0.4, 0.2, 0.05]]]) * 100
    masks = np.array([[[1, 0, 0]], [[1, 0, 1]]], dtype=bool)
    got = streamed(maps, masks, np.array([0.1, 0.9]), np.array([0, 1]), aupro=False)
    assert got["pixel_auroc"] == pytest.approx(100 * 5 / 9) and got["pixel_ap"] == pytest.approx(100 * 13 / 18)
    normal_only = streamed(maps, np.zeros_like(masks), np.array([0.1, 0.9]), np.array([0, 0]))
    assert all(math.isnan(value) for value in normal_only.values())


def test_classes_must_arrive_in_order():
    maps, masks, raw, labels = class_data(4, images=4)
    stream = StreamedMetrics(LOW, HIGH, mix=0.5, aupro=False)
    stream.add("a", maps[:2], masks[:2], raw[:2], labels[:2])
    stream.add("b", maps[2:], masks[2:], raw[2:], labels[2:])
    with pytest.raises(ValueError, match="class 'a' came back"):
        stream.add("a", maps[:2], masks[:2], raw[:2], labels[:2])
    assert set(stream.results()) == {"a", "b"}


def test_map_bounds_hold_for_extreme_features():
    import torch

    anchors = torch.nn.functional.normalize(torch.randn(2, 8, 2), dim=1)
    extreme = torch.cat([anchors[:, :, 1:] - anchors[:, :, :1], anchors[:, :, :1] - anchors[:, :, 1:]], dim=0)
    features = torch.nn.functional.normalize(extreme.transpose(1, 2).expand(-1, 16, -1), dim=-1)  # [4,16,8]
    logits = losses.similarity_logits(features, anchors.repeat(2, 1, 1))
    low, high = losses.anomaly_map_bounds(1)
    one_level = losses.anomaly_map(logits, 32, 3, 0.5)
    assert low <= float(one_level.min()) and float(one_level.max()) <= high
