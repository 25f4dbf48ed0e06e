"""Streamed evaluation of a real (tiny) model on real files equals the exact per-class computation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aaclip import metrics
from aaclip.config import TrainConfig
from aaclip.data.dataset import AnomalyDataset
from aaclip.evaluate import batch_predictions
from aaclip.session import build_session


def exact_class_metrics(session, config: TrainConfig) -> dict[str, dict[str, float]]:
    """What evaluation computed before streaming: every map of a class in memory, sklearn on all pixels."""
    records = session.data.val_records
    names = sorted({record.class_name for record in records})
    anchors = session.model.class_anchors(session.tokenize(names, config.data.val.prompt_names))
    per_class = {}
    for index, name in enumerate(names):
        dataset = AnomalyDataset(records, config.model.image_size, "none")
        items = [item for item in dataset if item["class_name"] == name]
        pixels = torch.stack([item["image"] for item in items])
        maps, scores = batch_predictions(session.model, pixels, anchors[index:index + 1].expand(len(items), -1, -1),
                                         config, None, torch.no_grad)
        masks = torch.stack([item["mask"][0] > 0.5 for item in items]).numpy()
        labels = np.array([int(item["label"]) for item in items])
        per_class[name] = metrics.class_metrics(maps.numpy(), masks, scores.numpy(), labels,
                                                mix=config.eval.image_score_mix, aupro=False)
        # pixel_aupro's default 200 thresholds are themselves ~0.05 points off the curve; 5,000 are not.
        per_class[name]["pixel_aupro"] = metrics.pixel_aupro(maps.numpy(), masks, thresholds=5000)
    return per_class


def test_streamed_evaluation_matches_the_exact_metrics(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = tiny_config.model_copy(update={"eval": tiny_config.eval.model_copy(update={"aupro": True, "batch": 5})})
    session = build_session(config)
    gallery = tmp_path / "gallery.png"
    streamed = session.evaluate(loop=0, gallery=gallery)
    with torch.no_grad():
        exact = metrics.summarise(exact_class_metrics(session, config), prefix="val")
    assert streamed.keys() == exact.keys()
    for key, value in exact.items():
        # Binning ties pixels closer than ~8e-4; an untrained tiny model spreads its maps over only a few units,
        # so the pixel metrics move by up to ~0.005 points here.
        assert streamed[key] == pytest.approx(value, abs=0.01), key
    assert gallery.is_file() and gallery.stat().st_size > 0
