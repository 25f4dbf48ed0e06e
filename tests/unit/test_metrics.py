"""Hand-computed checks of the evaluation metrics (aaclip.metrics)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip import metrics

# Two 1x3 images. Anomalous pixels score 0.9, 0.4, 0.05; normal pixels 0.8, 0.1, 0.2.
PIXEL_MAPS = np.array([[[0.9, 0.8, 0.1]], [[0.4, 0.2, 0.05]]])
PIXEL_MASKS = np.array([[[1, 0, 0]], [[1, 0, 1]]], dtype=bool)


def test_pixel_auroc_and_ap_hand_values_x100_full_precision():
    result = metrics.class_metrics(PIXEL_MAPS, PIXEL_MASKS, np.array([0.1, 0.9]), np.array([0, 1]), aupro=False)
    # AUROC: of 3 x 3 (anomalous, normal) pairs, 0.9 wins 3, 0.4 wins 2, 0.05 wins 0 -> 5/9.
    assert result["pixel_auroc"] == pytest.approx(100 * 5 / 9, abs=1e-9)
    # AP: ranked 0.9 A, 0.8 N, 0.4 A, 0.2 N, 0.1 N, 0.05 A -> precisions 1, 2/3, 3/6 at the hits -> 13/18.
    assert result["pixel_ap"] == pytest.approx(100 * 13 / 18, abs=1e-9)
    assert result["pixel_auroc"] != round(5 / 9, 4) * 100  # not rounded to 4 decimals first
    flat_truth, flat_scores = PIXEL_MASKS.ravel(), PIXEL_MAPS.ravel()
    assert result["pixel_auroc"] == pytest.approx(100 * roc_auc_score(flat_truth, flat_scores))
    assert result["pixel_ap"] == pytest.approx(100 * average_precision_score(flat_truth, flat_scores))
    assert "pixel_aupro" not in result


def test_perfect_maps_give_100_everywhere():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:4, 2:5] = True
    masks[2, 6:, :2] = True
    maps = masks.astype(np.float32) * 3.0 + 2.0
    result = metrics.class_metrics(maps, masks, np.array([0.1, 0.7, 0.8]), np.array([0, 1, 1]))
    assert result == pytest.approx(dict.fromkeys(
        ("pixel_auroc", "pixel_ap", "pixel_aupro", "image_auroc", "image_ap"), 100.0))


def test_minmax_normalise_global_and_constant_guard():
    values = np.array([[1.0, 3.0], [5.0, 2.0]])
    assert np.allclose(metrics.minmax_normalise(values), [[0.0, 0.5], [1.0, 0.25]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference would divide 0 by 0 here
        assert np.array_equal(metrics.minmax_normalise(np.full((2, 3), 0.3)), np.zeros((2, 3)))


def test_image_scores_mix_hand_values():
    maps = np.array([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 1.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    raw = np.array([0.2, 0.6, 0.4])
    # class min 0, max 4: per-image maxima 3, 4, 2 -> 0.75, 1, 0.5; raw -> 0, 1, 0.5
    assert np.allclose(metrics.image_scores(maps, raw, 0.5), [0.375, 1.0, 0.5])
    assert np.allclose(metrics.image_scores(maps, raw, 0.25), [0.1875, 1.0, 0.5])
    assert np.allclose(metrics.image_scores(maps, raw, 1.0), [0.75, 1.0, 0.5])  # medical: map only


def test_image_scores_skip_normalisation_when_max_is_exactly_one():
    maps = np.array([[[1.0, 0.5]], [[0.75, 0.5]]])  # max 1: kept as is (normalised would be 1, 0.5)
    raw = np.array([1.0, 0.5])  # max 1: kept as is (normalised would be 1, 0)
    assert np.allclose(metrics.image_scores(maps, raw, 0.5), [1.0, 0.625])


def test_image_scores_constant_inputs_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metrics.image_scores(np.full((3, 2, 2), 0.3), np.full(3, 0.7), 0.5)
    assert np.array_equal(scores, np.zeros(3))


def test_one_label_class_gives_nan_not_zero():
    maps = np.random.default_rng(0).random((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, :2, :2] = True
    result = metrics.class_metrics(maps, masks, np.array([0.2, 0.4]), np.array([1, 1]))
    assert math.isnan(result["image_auroc"]) and math.isnan(result["image_ap"])
    assert not math.isnan(result["pixel_auroc"])


def test_all_normal_masks_give_nan_pixel_metrics():
    maps = np.random.default_rng(0).random((2, 4, 4))
    result = metrics.class_metrics(maps, np.zeros((2, 4, 4), dtype=bool), np.array([0.2, 0.4]), np.array([0, 1]))
    assert all(math.isnan(result[name]) for name in ("pixel_auroc", "pixel_ap", "pixel_aupro"))
    assert result["image_auroc"] == pytest.approx(100.0)


# One row: regions A (scores 1.0, 0.25) and B (0.5); five normal pixels 0.75, 0.25, 0, 0, 0.
AUPRO_ROW = np.array([[[1.0, 0.25, 0.75, 0.25, 0.0, 0.5, 0.0, 0.0]]])
AUPRO_ROW_MASK = np.array([[[1, 1, 0, 0, 0, 1, 0, 0]]], dtype=bool)


@pytest.mark.parametrize("split", [False, True])
def test_aupro_hand_case(split: bool):
    # Operating points (threshold descending; PRO = mean of A's and B's covered fractions):
    #   t > 1: (0, 0); t = 1: A half -> (0, 0.25); t = 0.75: one normal of five -> (0.2, 0.25);
    #   t = 0.5: B -> (0.2, 0.75); t = 0.25: A full + one normal -> (0.4, 1); t = 0: (1, 1).
    # Area on FPR [0, 0.3]: 0.2 * 0.25 = 0.05, then 0.75 -> 0.875 (interpolated at 0.3) over 0.1 = 0.08125.
    # AUPRO = 0.13125 / 0.3 = 0.4375 -> 43.75. Split over two images the regions and counts are the same.
    maps, masks = AUPRO_ROW, AUPRO_ROW_MASK
    if split:
        maps, masks = maps.reshape(2, 1, 4), masks.reshape(2, 1, 4)
    assert metrics.pixel_aupro(maps, masks) == pytest.approx(43.75, abs=1e-9)


def test_aupro_is_unchanged_by_an_increasing_affine_map():
    assert metrics.pixel_aupro(3.0 * AUPRO_ROW - 7.0, AUPRO_ROW_MASK) == pytest.approx(43.75, abs=1e-9)


def test_aupro_regions_use_8_connectivity():
    # Diagonal pair (0,0)-(1,1) is ONE region of area 2; (3,3) is another. Only (0,0) scores 1, rest 0.
    # t = 1: PRO = mean(1/2, 0) = 0.25 at FPR 0; t = 0: (1, 1). Interpolated PRO at 0.3 = 0.25 + 0.75 * 0.3.
    # Area = 0.3 * (0.25 + 0.475) / 2 = 0.10875 -> 36.25. (4-connectivity would give 43.33.)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    assert metrics.pixel_aupro(maps, masks) == pytest.approx(36.25, abs=1e-9)


def test_aupro_perfect_map_is_100_and_no_region_raises():
    assert metrics.pixel_aupro(AUPRO_ROW_MASK.astype(float), AUPRO_ROW_MASK) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no anomalous region"):
        metrics.pixel_aupro(AUPRO_ROW, np.zeros_like(AUPRO_ROW_MASK))


def test_summarise_names_and_nan_aware_means():
    per_class = {
        "bottle": {"pixel_auroc": 90.0, "image_auroc": 80.0},
        "cable": {"pixel_auroc": 70.0, "image_auroc": math.nan},
        "grid": {"pixel_auroc": math.nan, "image_auroc": math.nan},
    }
    summary = metrics.summarise(per_class, prefix="val")
    assert summary["val/bottle/pixel_auroc"] == 90.0
    assert math.isnan(summary["val/cable/image_auroc"])
    assert summary["val/pixel_auroc"] == pytest.approx(80.0)
    assert summary["val/image_auroc"] == pytest.approx(80.0)
    assert len(summary) == 3 * 2 + 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_nan = metrics.summarise({"grid": {"image_ap": math.nan}}, prefix="test")
    assert set(all_nan) == {"test/grid/image_ap", "test/image_ap"} and math.isnan(all_nan["test/image_ap"])
