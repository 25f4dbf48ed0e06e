"""The metrics of aaclip.metrics from batches, in memory that does not grow with the number of images.

Pixel metrics rank every pixel score of a class, but the scores are bounded (aaclip.losses.anomaly_map_bounds),
so each class keeps fixed-range histograms instead of the scores: anomalous and normal pixel counts per bin,
and for AUPRO each bin's share of every anomalous region (a region's pixel adds 1 / region size). AUROC and AP
are then exactly sklearn's values for the scores rounded down to their bin, and AUPRO is the MVTec AD curve
with a threshold at every bin edge. With 2^20 bins over the range of 4 summed levels (width ~8e-4) they agree
with the exact metrics to about 1e-3 points for maps spread over ~10 units, and within 0.01 points for the
narrow maps of an untrained tiny model (tests/unit/test_streamed_metrics.py and
tests/integration/test_evaluate_streaming.py); AUPRO lies closer to a fine-grid computation than pixel_aupro's
200 thresholds do. Min-max normalisation per class is increasing, so pixel metrics need none. Image metrics need
only per-image scalars (map maximum and minimum, raw score, label), kept in lists.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from aaclip.metrics import PIXEL_METRICS, area_up_to, image_metrics, image_scores_from_maxima

__all__ = ["HISTOGRAM_BINS", "ClassStream", "StreamedMetrics"]

HISTOGRAM_BINS = 2**20
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)  # 8-connectivity, as aaclip.metrics.pixel_aupro


class ClassStream:
    """Everything one class's metrics need, added batch by batch: three histograms and four scalars per image."""

    def __init__(self, low: float, high: float, *, aupro: bool = True, bins: int = HISTOGRAM_BINS):
        self.low, self.bins, self.aupro = low, bins, aupro
        self.scale = bins / (high - low)
        self.anomalous = np.zeros(bins, dtype=np.int64)
        self.normal = np.zeros(bins, dtype=np.int64)
        self.region_share = np.zeros(bins, dtype=np.float64) if aupro else None
        self.regions = 0
        self.map_max: list[float] = []
        self.map_min: list[float] = []
        self.raw_scores: list[float] = []
        self.labels: list[int] = []

    def bin_of(self, scores: np.ndarray) -> np.ndarray:
        """Bin index of each score; the range is an exact bound, the clip only absorbs float rounding."""
        return np.clip(((scores - self.low) * self.scale).astype(np.int64), 0, self.bins - 1)

    def add(self, maps: np.ndarray, masks: np.ndarray, raw_scores: np.ndarray, labels: np.ndarray) -> None:
        """maps [B,H,W] float, masks [B,H,W] bool, raw_scores [B], labels [B]."""
        bins, masks = self.bin_of(maps), np.asarray(masks, dtype=bool)
        self.anomalous += np.bincount(bins[masks], minlength=self.bins)
        self.normal += np.bincount(bins[~masks], minlength=self.bins)
        if self.aupro:
            for image_bins, mask in zip(bins, masks):
                self._add_regions(image_bins, mask)
        flat = maps.reshape(len(maps), -1)
        self.map_max.extend(flat.max(axis=1).tolist())
        self.map_min.extend(flat.min(axis=1).tolist())
        self.raw_scores.extend(np.asarray(raw_scores, dtype=np.float64).tolist())
        self.labels.extend(np.asarray(labels).astype(int).tolist())

    def _add_regions(self, image_bins: np.ndarray, mask: np.ndarray) -> None:
        regions, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
        if count == 0:
            return
        inside = regions > 0
        sizes = np.bincount(regions[inside])  # sizes[r] for r = 1..count (sizes[0] = 0, unused)
        self.region_share += np.bincount(image_bins[inside], weights=1.0 / sizes[regions[inside]],
                                         minlength=self.bins)
        self.regions += count

    def metrics(self, mix: float) -> dict[str, float]:
        """The keys and values of aaclip.metrics.class_metrics (pixel ones from the binned scores)."""
        result = self._pixel_metrics()
        scores = image_scores_from_maxima(np.array(self.map_max), min(self.map_min), max(self.map_max),
                                          np.array(self.raw_scores), mix)
        result.update(image_metrics(scores, np.array(self.labels)))
        return result

    def _pixel_metrics(self) -> dict[str, float]:
        names = PIXEL_METRICS + (("pixel_aupro",) if self.aupro else ())
        if not self.anomalous.any() or not self.normal.any():
            return dict.fromkeys(names, math.nan)
        # Thresholds from the top bin down: counts at or above each bin's lower edge.
        above_anomalous = np.cumsum(self.anomalous[::-1])
        above_normal = np.cumsum(self.normal[::-1])
        result = {"pixel_auroc": histogram_auroc(above_anomalous, above_normal),
                  "pixel_ap": histogram_ap(self.anomalous[::-1], above_anomalous, above_normal)}
        if self.aupro:
            pro = np.cumsum(self.region_share[::-1]) / self.regions
            result["pixel_aupro"] = histogram_aupro(above_normal / above_normal[-1], pro)
        return result


def histogram_auroc(above_anomalous: np.ndarray, above_normal: np.ndarray) -> float:
    """Trapezoids under (FPR, TPR) through every bin edge: sklearn's roc_auc_score, ties within a bin and all."""
    tpr = np.concatenate(([0.0], above_anomalous / above_anomalous[-1]))
    fpr = np.concatenate(([0.0], above_normal / above_normal[-1]))
    return 100.0 * float(np.trapezoid(tpr, fpr))


def histogram_ap(anomalous_descending: np.ndarray, above_anomalous: np.ndarray, above_normal: np.ndarray) -> float:
    """sum over thresholds of (recall step) x precision, at the bins that hold an anomalous pixel (sklearn's AP)."""
    hits = anomalous_descending > 0
    precision = above_anomalous[hits] / (above_anomalous[hits] + above_normal[hits])
    recall_steps = anomalous_descending[hits] / above_anomalous[-1]
    return 100.0 * float(np.sum(recall_steps * precision))


def histogram_aupro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The MVTec AD area under PRO(FPR) up to fpr_limit, / fpr_limit, x100, from the curve at every bin edge."""
    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))
    return 100.0 * area_up_to(fpr, pro, fpr_limit) / fpr_limit


class StreamedMetrics:
    """Per-class metrics from batches that arrive in class order: one class's histograms are alive at a time."""

    def __init__(self, low: float, high: float, *, mix: float, aupro: bool, bins: int = HISTOGRAM_BINS):
        self.low, self.high, self.mix, self.aupro, self.bins = low, high, mix, aupro, bins
        self.per_class: dict[str, dict[str, float]] = {}
        self.current: tuple[str, ClassStream] | None = None

    def add(self, class_name: str, maps: np.ndarray, masks: np.ndarray, raw_scores: np.ndarray,
            labels: np.ndarray) -> None:
        if self.current is None or self.current[0] != class_name:
            if class_name in self.per_class:
                raise ValueError(f"class {class_name!r} came back after another class: feed batches in class order")
            self._close()
            self.current = (class_name, ClassStream(self.low, self.high, aupro=self.aupro, bins=self.bins))
        self.current[1].add(maps, masks, raw_scores, labels)

    def _close(self) -> None:
        if self.current is not None:
            name, stream = self.current
            self.per_class[name] = stream.metrics(self.mix)
            self.current = None

    def results(self) -> dict[str, dict[str, float]]:
        self._close()
        return self.per_class

