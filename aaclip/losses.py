"""Similarity maps and losses of AA-CLIP (reference §3.3-§3.4, §5).

Pure functions on tensors. Shapes: B batch, L = h*w patch tokens on a square grid (token l = r*w + c, the
row-major order of the patch-embedding flattening), E embedding width. Anchors T [B,E,2] hold the normal class
anchor in column 0 and the abnormal one in column 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur

__all__ = [
    "TEMPERATURE", "similarity_logits", "training_probabilities", "focal_loss", "dice_loss",
    "segmentation_loss", "orthogonality_loss", "classification_loss", "anomaly_map", "anomaly_map_bounds",
    "image_raw_score",
]

# Fixed CLIP-style temperature of the patch/anchor similarity (§5.1); the reference has no learnable scale.
TEMPERATURE = 100.0


def similarity_logits(features: Tensor, anchors: Tensor) -> Tensor:
    """[B,L,E] patch features x [B,E,2] anchors -> [B,2,h,w] logits, 100 * F @ T laid out on the patch grid."""
    batch, tokens, _ = features.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"similarity_logits needs a square patch grid, got {tokens} tokens")
    logits = TEMPERATURE * torch.bmm(features, anchors)  # [B,L,2]
    # [B,L,2] -> [B,2,L] -> [B,2,h,w]: row-major, so token l lands at row l // w, column l % w.
    return logits.transpose(1, 2).reshape(batch, 2, side, side)


def _upsample(grid: Tensor, size: int) -> Tensor:
    # align_corners=True as in the reference (§5.1), for training and test maps alike.
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)


def training_probabilities(logits: Tensor, size: int) -> Tensor:
    """Training mode (§5.1 step 3): upsample the logits to size x size, then softmax over normal/abnormal."""
    return _upsample(logits, size).softmax(dim=1)


def focal_loss(probs: Tensor, mask: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss on probabilities [B,2,H,W] against a binary mask [B,1,H,W] (§5.2, Loss_ToolBox variant).

    The one-hot target is clamped to [smooth, 1 - smooth] (smooth / (C - 1) with C = 2) and smooth is added to
    p_t before the log, so a perfect prediction gives exactly 0 and a fully wrong one stays finite.
    """
    abnormal = (mask[:, 0] > 0.5).to(probs.dtype)
    one_hot = torch.stack((1.0 - abnormal, abnormal), dim=1).clamp(smooth, 1.0 - smooth)
    p_true = (one_hot * probs).sum(dim=1) + smooth
    return (-(1.0 - p_true).pow(gamma) * p_true.log()).mean()


def dice_loss(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Binary dice [B,H,W]: 1 - mean over samples of (2 sum(p t) + s) / (sum(p) + sum(t) + s) (§5.2)."""
    prob, target = prob.flatten(1), target.flatten(1).to(prob.dtype)
    overlap = (prob * target).sum(dim=1)
    dice = (2.0 * overlap + smooth) / (prob.sum(dim=1) + target.sum(dim=1) + smooth)
    return 1.0 - dice.mean()


def segmentation_loss(probs: Tensor, mask: Tensor) -> Tensor:
    """L_seg = Focal(P, M) + Dice(P_normal, 1 - M) + Dice(P_abnormal, M) for one level (§5.2)."""
    abnormal = mask[:, 0].to(probs.dtype)
    return (focal_loss(probs, mask) + dice_loss(probs[:, 0], 1.0 - abnormal)
            + dice_loss(probs[:, 1], abnormal))


def orthogonality_loss(anchors: Tensor) -> Tensor:
    """(batch mean of <t_n, t_a>)^2 (§3.4): the square of the mean, not the mean of squares, as the reference."""
    return (anchors[:, :, 0] * anchors[:, :, 1]).sum(dim=1).mean().square()


def _detection_logits(det_token: Tensor, anchors: Tensor) -> Tensor:
    # [B,E] x [B,E,2] -> [B,2]; no temperature (§5.3), so the logits stay within [-1, 1].
    return torch.einsum("be,bec->bc", det_token, anchors)


def classification_loss(det_token: Tensor, anchors: Tensor, labels: Tensor) -> Tensor:
    """Stage-2 image loss: cross-entropy of det_token @ T against the image labels (0 normal, 1 abnormal)."""
    return F.cross_entropy(_detection_logits(det_token, anchors), labels.long())


def anomaly_map(logits: Tensor, size: int, blur_kernel: int, blur_sigma: float) -> Tensor:
    """Test mode (§5.1 step 4): [B,2,h,w] logits -> [B,S,S] map (S_abn + 1 - S_norm) / 2, blurred, upsampled.

    The blur is torchvision's gaussian_blur, which pads with "reflect" like kornia's gaussian_blur2d default
    used by the reference, and builds the same normalised Gaussian kernel, so the maps match the reference at
    the border too. Reflect padding needs blur_kernel // 2 < h. Summing over levels is the caller's job.
    """
    score = (logits[:, 1:2] + 1.0 - logits[:, 0:1]) / 2.0  # [B,1,h,w], still on the x100 logit scale
    blurred = gaussian_blur(score, kernel_size=[blur_kernel, blur_kernel], sigma=[blur_sigma, blur_sigma])
    return _upsample(blurred, size)[:, 0]


def anomaly_map_bounds(levels: int) -> tuple[float, float]:
    """Bounds of a sum of `levels` anomaly maps, for fixed-range histograms of their values.

    Features and anchors are unit vectors, so each logit lies in [-T, T] (T = TEMPERATURE) and a level's
    (l_abn + 1 - l_norm) / 2 in [(1 - 2T) / 2, (1 + 2T) / 2]; the normalised blur and the bilinear upsampling
    average neighbouring values, which keeps them in that range.
    """
    return levels * (1.0 - 2.0 * TEMPERATURE) / 2.0, levels * (1.0 + 2.0 * TEMPERATURE) / 2.0


def image_raw_score(det_token: Tensor, anchors: Tensor) -> Tensor:
    """(det_token @ t_a + 1) / 2 per image (§10); det_token is not re-normalised, as in the reference."""
    return (_detection_logits(det_token, anchors)[:, 1] + 1.0) / 2.0
