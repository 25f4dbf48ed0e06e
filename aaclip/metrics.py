"""Per-class evaluation metrics (reference §10), on numpy arrays on the CPU.

Every metric is reported x100 as in the reference, at full precision (the reference rounds to 4 decimals
before scaling; rounding is for display, not for means over classes). Undefined metrics are NaN, never 0,
so that `summarise` can leave them out of the means.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip.metric_names import evaluation

__all__ = ["minmax_normalise", "image_scores", "pixel_aupro", "class_metrics", "summarise"]

PIXEL_METRICS = ("pixel_auroc", "pixel_ap")
IMAGE_METRICS = ("image_auroc", "image_ap")
# 8-connectivity for anomalous regions, as in the MVTec AD evaluation code (a diagonal touch is one region).
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    # Guard missing in the reference (§13.16): a constant class would divide by zero there; here it maps to 0.
    if high == low:
        return np.zeros(np.shape(values), dtype=np.float64)
    return (np.asarray(values, dtype=np.float64) - low) / (high - low)


def minmax_normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise with one global min/max over the whole array (all maps of a class); constant -> 0."""
    return _rescale(values, float(np.min(values)), float(np.max(values)))


def _reference_normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    # The reference skips normalisation when the maximum is exactly 1 (§10); reproduced for comparability.
    return np.asarray(values, dtype=np.float64) if high == 1.0 else _rescale(values, low, high)


def image_scores(maps: np.ndarray, raw_scores: np.ndarray, mix: float) -> np.ndarray:
    """mix * max pixel of the class-normalised maps + (1 - mix) * class-normalised raw score, per image.

    Min-max normalisation is increasing and affine, so the maximum of a normalised map is the normalised
    maximum: only the N per-image maxima are normalised, never a copy of the [N,H,W] maps.
    """
    per_image_max = maps.reshape(len(maps), -1).max(axis=1)
    return image_scores_from_maxima(per_image_max, float(maps.min()), float(maps.max()), raw_scores, mix)


def image_scores_from_maxima(per_image_max: np.ndarray, map_low: float, map_high: float, raw_scores: np.ndarray,
                             mix: float) -> np.ndarray:
    """image_scores from per-image scalars only: each map's maximum and the class's map minimum and maximum."""
    map_part = _reference_normalise(per_image_max, map_low, map_high)
    raw_part = _reference_normalise(raw_scores, float(np.min(raw_scores)), float(np.max(raw_scores)))
    return mix * map_part + (1.0 - mix) * raw_part


def _counts_above(histogram: np.ndarray) -> np.ndarray:
    # histogram[..., b] counts pixels with b thresholds <= score; a pixel is positive at threshold k (scores >=
    # thresholds[k]) iff b > k, so positives at k = sum over b > k: a reversed cumulative sum, shifted by one.
    return np.cumsum(histogram[..., ::-1], axis=-1)[..., ::-1][..., 1:]


def _threshold_bins(score_map: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.searchsorted(thresholds, score_map.ravel(), side="right")


def _false_positive_rates(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    histogram = np.zeros(len(thresholds) + 1, dtype=np.int64)
    for score_map, mask in zip(maps, masks):  # one image at a time keeps the temporaries image-sized
        bins = _threshold_bins(score_map, thresholds)
        histogram += np.bincount(bins[~mask.ravel()], minlength=len(thresholds) + 1)
    return _counts_above(histogram) / histogram.sum()


def _region_overlaps(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[regions, thresholds]: fraction of each connected anomalous region at or above each threshold."""
    width = len(thresholds) + 1
    per_image = []
    for score_map, mask in zip(maps, masks):
        regions, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
        if count == 0:
            continue
        inside = regions.ravel() > 0
        keys = (regions.ravel()[inside] - 1) * width + _threshold_bins(score_map, thresholds)[inside]
        per_image.append(np.bincount(keys, minlength=count * width).reshape(count, width))
    if not per_image:
        raise ValueError("pixel_aupro: the masks hold no anomalous region, AUPRO is undefined")
    histogram = np.concatenate(per_image)
    return _counts_above(histogram) / histogram.sum(axis=1, keepdims=True)


def area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    # Trapezoid under the curve on [0, limit], the last point interpolated at `limit` (MVTec AD's trapezoid).
    # fpr and pro are both non-decreasing (thresholds descending) and end at (1, 1).
    cut = int(np.searchsorted(fpr, limit, side="right"))
    if cut < len(fpr):
        share = (limit - fpr[cut - 1]) / (fpr[cut] - fpr[cut - 1])
        fpr = np.append(fpr[:cut], limit)
        pro = np.append(pro[:cut], pro[cut - 1] + share * (pro[cut] - pro[cut - 1]))
    return float(np.trapezoid(pro, fpr))


def pixel_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to FPR = fpr_limit, divided by fpr_limit, x100.

    Standard MVTec AD definition: at threshold t a pixel is positive when its score >= t. FPR(t) = positives
    among all normal pixels of the class / their number. PRO(t) = mean over every connected anomalous region
    (8-connectivity, per image) of the region's positive fraction, so small defects weigh as much as large
    ones. The curve, from (0, 0) to (1, 1), is integrated by trapezoids over FPR in [0, fpr_limit].
    Thresholds: a linear grid over the score range finds the last one with FPR >= fpr_limit; a second grid
    of `thresholds` values from there to the maximum then resolves only the integrated part of the curve.
    Raises ValueError when the masks have no anomalous region (or no normal pixel): the caller decides.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.all():
        raise ValueError("pixel_aupro: the masks hold no normal pixel, the false-positive rate is undefined")
    low, high = float(maps.min()), float(maps.max())
    coarse = np.linspace(low, high, thresholds)
    start = coarse[np.flatnonzero(_false_positive_rates(maps, masks, coarse) >= fpr_limit)[-1]]
    grid = np.linspace(start, high, thresholds)
    pro = _region_overlaps(maps, masks, grid)[:, ::-1].mean(axis=0)  # [::-1]: thresholds descending
    fpr = _false_positive_rates(maps, masks, grid)[::-1]
    fpr = np.concatenate(([0.0], fpr, [1.0]))  # thresholds above the maximum and below the minimum
    pro = np.concatenate(([0.0], pro, [1.0]))
    return 100.0 * area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _pixel_metrics(maps: np.ndarray, masks: np.ndarray, aupro: bool) -> dict[str, float]:
    names = PIXEL_METRICS + (("pixel_aupro",) if aupro else ())
    if not masks.any() or masks.all():  # one pixel label only: every pixel metric is undefined
        return dict.fromkeys(names, math.nan)
    # Ranking metrics are unchanged by the class min-max normalisation (increasing and affine), so they are
    # computed on the raw maps; reshape(-1) is a view of contiguous maps, not a copy.
    scores, truth = maps.reshape(-1), masks.reshape(-1)
    metrics = {"pixel_auroc": 100.0 * roc_auc_score(truth, scores),
               "pixel_ap": 100.0 * average_precision_score(truth, scores)}
    if aupro:
        metrics["pixel_aupro"] = pixel_aupro(maps, masks)
    return {name: float(value) for name, value in metrics.items()}


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    # The reference writes 0 for a class with one image label; 0 is a value, not "undefined", and would pull
    # the class mean down. NaN is left out by summarise's NaN-aware mean.
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return dict.fromkeys(IMAGE_METRICS, math.nan)
    return {"image_auroc": float(100.0 * roc_auc_score(labels, scores)),
            "image_ap": float(100.0 * average_precision_score(labels, scores))}


def class_metrics(maps: np.ndarray, masks: np.ndarray, raw_scores: np.ndarray, labels: np.ndarray, *,
                  mix: float = 0.5, aupro: bool = True) -> dict[str, float]:
    """Metrics of one class: maps [N,H,W] (levels summed), masks [N,H,W] bool, raw_scores [N], labels [N].

    Keys pixel_auroc, pixel_ap (+ pixel_aupro), image_auroc, image_ap, x100; NaN where undefined.
    mix = 0.5 for industrial datasets, 1.0 (map maximum only) for medical ones (§10).
    """
    masks = np.asarray(masks, dtype=bool)
    metrics = _pixel_metrics(maps, masks, aupro)
    metrics.update(image_metrics(image_scores(maps, raw_scores, mix), labels))
    return metrics


def _nan_mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan  # no "mean of empty slice" warning


def summarise(per_class: dict[str, dict[str, float]], prefix: str = "val") -> dict[str, float]:
    """{prefix/class/metric: value} plus {prefix/metric: unweighted NaN-aware mean over classes} (§10)."""
    summary: dict[str, float] = {}
    metric_names: dict[str, None] = {}  # ordered set, first appearance first
    for class_name, metrics in per_class.items():
        for metric, value in metrics.items():
            summary[evaluation(metric, class_name, split=prefix)] = float(value)
            metric_names[metric] = None
    for metric in metric_names:
        values = [metrics.get(metric, math.nan) for metrics in per_class.values()]
        summary[evaluation(metric, split=prefix)] = _nan_mean(values)
    return summary
