"""Evaluation as in the reference (§10): per class, summed level maps, blur, image score mix; streamed per batch."""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from aaclip import losses, metrics
from aaclip.config import TrainConfig
from aaclip.data.dataset import AnomalyDataset
from aaclip.data.records import Record, class_names
from aaclip.data.transforms import CLIP_MEAN, CLIP_STD
from aaclip.model import AdaptedCLIP
from aaclip.notices import notice
from aaclip.prompt_tokens import PromptTokenizer
from aaclip.streamed_metrics import StreamedMetrics

GALLERY_IMAGES = 6


def evaluation_subset(records: list[Record], max_images: int | None, seed: int = 0) -> list[Record]:
    """A fixed, seeded subset: every trial and every loop is judged on the same images."""
    if max_images is None or len(records) <= max_images:
        return records
    chosen = set(random.Random(seed).sample(range(len(records)), max_images))
    return [record for index, record in enumerate(records) if index in chosen]


@torch.no_grad()
def batch_predictions(model: AdaptedCLIP, pixels: torch.Tensor, anchors: torch.Tensor, config: TrainConfig,
                      text_context: torch.Tensor | None, autocast: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed level maps [B,S,S] and raw image scores [B] of one batch; anchors (and context) are per image."""
    size, blur = config.model.image_size, config.eval.blur
    with autocast():
        features = model.encode_image(pixels, text_context)
    level_maps = [losses.anomaly_map(losses.similarity_logits(tokens.float(), anchors), size, blur.kernel,
                                     blur.sigma) for tokens in features.seg_tokens]
    scores = losses.image_raw_score(features.det_token.float(), anchors)
    return torch.stack(level_maps).sum(dim=0).cpu(), scores.cpu()


@torch.no_grad()
def class_text(model: AdaptedCLIP, tokenize: PromptTokenizer, names: list[str], config: TrainConfig,
               device: torch.device, prompt_names: dict[str, str] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per class: the anchors [C,E,2], made without text cross-attention at test time (§7.6), and the text
    contexts [C,P*T,width] when image cross-attention runs at inference (else None)."""
    tokens = tokenize(names, prompt_names).to(device)
    use_context = config.cross_attention.enabled and config.cross_attention.at_inference
    return model.class_anchors(tokens), (model.text_context(tokens) if use_context else None)


def class_runs(names: list[str]) -> list[tuple[str, slice]]:
    """(class, rows) for each run of one class in a batch's class names (records come sorted by class)."""
    runs, start = [], 0
    for index in range(1, len(names) + 1):
        if index == len(names) or names[index] != names[start]:
            runs.append((names[start], slice(start, index)))
            start = index
    return runs


@dataclass
class GalleryRow:
    image: torch.Tensor  # [3,S,S], CLIP-normalised
    mask: np.ndarray  # [S,S] bool
    anomaly_map: np.ndarray  # [S,S]
    anomalous: bool


class GalleryPicker:
    """The first anomalous image of each of the first classes (their first image if none is anomalous), picked
    as batches pass: only the few rows drawn are kept, never the evaluated images."""

    def __init__(self, names: list[str]):
        self.rows: dict[str, GalleryRow] = {}
        self.wanted = set(sorted(names)[:GALLERY_IMAGES])

    def offer(self, class_name: str, images: torch.Tensor, masks: np.ndarray, maps: np.ndarray,
              labels: np.ndarray) -> None:
        """Rows of one class from a batch; copies at most one of them."""
        kept, anomalous = self.rows.get(class_name), np.flatnonzero(labels)
        if class_name not in self.wanted or (kept is not None and (kept.anomalous or not len(anomalous))):
            return
        index = int(anomalous[0]) if len(anomalous) else 0
        self.rows[class_name] = GalleryRow(images[index].clone(), masks[index].copy(), maps[index].copy(),
                                           bool(len(anomalous)))

    def in_order(self) -> list[GalleryRow]:
        return [self.rows[name] for name in sorted(self.rows)]


@torch.no_grad()
def evaluate_records(model: AdaptedCLIP, tokenize: PromptTokenizer, records: list[Record], config: TrainConfig,
                     device: torch.device, *,
                     prefix: str = "val", prompt_names: dict[str, str] | None = None, gallery: Path | None = None,
                     autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """`{prefix}/<metric>` means over classes and `{prefix}/<class>/<metric>`, ×100 as in the reference.

    One loader streams every class in class order; each batch is scored, added to its class's histograms and
    offered to the gallery, then dropped, so memory does not grow with the number of images (aaclip.
    streamed_metrics).
    """
    was_training = model.training
    model.eval()
    chosen = sorted(evaluation_subset(records, config.eval.max_images), key=lambda record: record.class_name)
    names = class_names(chosen)
    anchors, contexts = class_text(model, tokenize, names, config, device, prompt_names)
    index_of = {name: index for index, name in enumerate(names)}
    low, high = losses.anomaly_map_bounds(len(config.adapters.levels))
    stream = StreamedMetrics(low, high, mix=config.eval.image_score_mix, aupro=config.eval.aupro)
    picker = GalleryPicker(names)
    dataset = AnomalyDataset(chosen, config.model.image_size, "none", config.data.seed)
    for batch in DataLoader(dataset, batch_size=config.eval.batch, shuffle=False, num_workers=config.data.workers):
        rows = torch.tensor([index_of[name] for name in batch["class_name"]], device=device)
        context = None if contexts is None else contexts[rows]
        maps, scores = batch_predictions(model, batch["image"].to(device), anchors[rows], config, context, autocast)
        maps, scores = maps.numpy(), scores.numpy()
        masks, labels = (batch["mask"][:, 0] > 0.5).numpy(), batch["label"].numpy()
        for name, run in class_runs(batch["class_name"]):
            stream.add(name, maps[run], masks[run], scores[run], labels[run])
            picker.offer(name, batch["image"][run], masks[run], maps[run], labels[run])
    model.train(was_training)
    if gallery is not None:
        save_gallery(gallery, picker.in_order())
    results = metrics.summarise(stream.results(), prefix=prefix)
    undefined = sorted(key for key, value in results.items() if math.isnan(value))
    if undefined:
        notice(f"{prefix}: undefined (NaN) metrics, left out of the means: {', '.join(undefined)}")
    return results


def save_gallery(path: Path, rows: list[GalleryRow]) -> None:
    """Input, mask, map for the first anomalous image of each class (up to six rows)."""
    # Lazy: matplotlib (~1 s to import) only where a gallery is drawn, and its backend must be set before pyplot.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    for axis_row, row in zip(axes, rows):
        image = (row.image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = (image, row.mask, row.anomaly_map)
        for axis, panel, title in zip(axis_row, panels, ("input", "mask", "anomaly map")):
            axis.imshow(panel, cmap=None if panel.ndim == 3 else ("gray" if title == "mask" else "jet"))
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=80)
    plt.close(figure)
    temporary.replace(path)
