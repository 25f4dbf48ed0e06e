"""Evaluation as in the reference (§10): per class, summed level maps, blur, image score mix, sklearn metrics."""
from __future__ import annotations

import contextlib
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from aaclip import losses, metrics
from aaclip.config import TrainConfig
from aaclip.data.dataset import AnomalyDataset
from aaclip.data.records import Record
from aaclip.data.transforms import CLIP_MEAN, CLIP_STD
from aaclip.model import AdaptedCLIP
from aaclip.notices import notice

GALLERY_IMAGES = 6


def evaluation_subset(records: list[Record], max_images: int | None, seed: int = 0) -> list[Record]:
    """A fixed, seeded subset: every trial and every loop is judged on the same images."""
    if max_images is None or len(records) <= max_images:
        return records
    chosen = set(random.Random(seed).sample(range(len(records)), max_images))
    return [record for index, record in enumerate(records) if index in chosen]


@torch.no_grad()
def class_predictions(model: AdaptedCLIP, records: list[Record], anchors: torch.Tensor, config: TrainConfig,
                      device: torch.device, text_context: torch.Tensor | None, autocast: Callable) -> dict:
    """Maps [N,S,S], raw image scores [N], masks and labels for the records of one class."""
    dataset = AnomalyDataset(records, config.model.image_size, "none", config.data.seed)
    loader = DataLoader(dataset, batch_size=config.eval.batch, shuffle=False, num_workers=config.data.workers)
    size, blur = config.model.image_size, config.eval.blur
    maps, scores, masks, labels, images = [], [], [], [], []
    for batch in loader:
        pixels = batch["image"].to(device)
        context = None if text_context is None else text_context.expand(len(pixels), -1, -1)
        with autocast():
            features = model.encode_image(pixels, context)
        batch_anchors = anchors.expand(len(pixels), -1, -1)
        level_maps = [losses.anomaly_map(losses.similarity_logits(tokens.float(), batch_anchors), size,
                                         blur.kernel, blur.sigma) for tokens in features.seg_tokens]
        maps.append(torch.stack(level_maps).sum(dim=0).cpu())
        scores.append(losses.image_raw_score(features.det_token.float(), batch_anchors).cpu())
        masks.append(batch["mask"][:, 0] > 0.5)
        labels.append(batch["label"])
        images.append(batch["image"])
    return {"maps": torch.cat(maps).numpy(), "scores": torch.cat(scores).numpy(),
            "masks": torch.cat(masks).numpy(), "labels": torch.cat(labels).numpy(), "images": torch.cat(images)}


def evaluate_records(model: AdaptedCLIP, records: list[Record], config: TrainConfig, device: torch.device, *,
                     prefix: str = "val", prompt_names: dict[str, str] | None = None, gallery: Path | None = None,
                     autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """`{prefix}/<metric>` means over classes and `{prefix}/<class>/<metric>`, ×100 as in the reference."""
    was_training = model.training
    model.eval()
    by_class: dict[str, list[Record]] = defaultdict(list)
    for record in evaluation_subset(records, config.eval.max_images):
        by_class[record.class_name].append(record)
    names = sorted(by_class)
    tokens = model.tokenize(names, prompt_names).to(device)
    anchors = model.class_anchors(tokens)  # no text cross-attention at test time (§7.6)
    use_context = config.cross_attention.enabled and config.cross_attention.at_inference
    contexts = model.text_context(tokens) if use_context else None
    per_class, shown = {}, []
    for index, name in enumerate(names):
        context = None if contexts is None else contexts[index: index + 1]
        result = class_predictions(model, by_class[name], anchors[index: index + 1], config, device, context,
                                   autocast)
        per_class[name] = metrics.class_metrics(result["maps"], result["masks"], result["scores"],
                                                result["labels"], mix=config.eval.image_score_mix,
                                                aupro=config.eval.aupro)
        shown.append(result)
    model.train(was_training)
    if gallery is not None:
        save_gallery(gallery, shown)
    results = metrics.summarise(per_class, prefix=prefix)
    undefined = sorted(key for key, value in results.items() if math.isnan(value))
    if undefined:
        notice(f"{prefix}: undefined (NaN) metrics, left out of the means: {', '.join(undefined)}")
    return results


def save_gallery(path: Path, results: list[dict]) -> None:
    """Input, mask, map for the first anomalous image of each class (up to six rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(result, int(np.argmax(result["labels"]))) for result in results][:GALLERY_IMAGES]
    figure, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    for row, (result, index) in zip(axes, rows):
        image = (result["images"][index] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = (image, result["masks"][index], result["maps"][index])
        for axis, panel, title in zip(row, panels, ("input", "mask", "anomaly map")):
            axis.imshow(panel, cmap=None if panel.ndim == 3 else ("gray" if title == "mask" else "jet"))
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=80)
    plt.close(figure)
    temporary.replace(path)
