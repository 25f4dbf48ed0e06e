"""Names of the metrics `fit` reports (DESIGN §4). A light module: checking a study's objective must not
import torch."""

LOOP_PREFIX = "loop/"  # loop records (fit's on_loop): `loop/val/pixel_auroc` at step = loop, 0 = untrained
EVALUATION_METRICS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap", "pixel_aupro")
REPORTED_METRICS = frozenset({
    "loop", "loop_progress", "stage", "epoch", "stage_epoch", "step", "train/text_loss", "train/image_loss", "train/nonfinite_steps",
    "grad/text_adapter", "grad/text_cross_attn", "grad/image_adapter", "grad/image_cross_attn",
    "grad/image_adapter_share", "scale/text", "scale/image", "lr/text", "lr/image", "time/epoch_s",
    "time/images_per_s", "memory/cuda_peak_gb", *(f"val/{metric}" for metric in EVALUATION_METRICS),
})
