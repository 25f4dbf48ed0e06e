"""Hand-computed checks of the similarity maps and losses (aaclip.losses)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aaclip import losses


def unit_anchors(normal: list[float], abnormal: list[float]) -> torch.Tensor:
    return torch.tensor([normal, abnormal]).T.unsqueeze(0)  # [1,E,2], column 0 normal, column 1 abnormal


def test_similarity_logits_hand_values_and_row_major_grid():
    # Tokens 0..3 of a 2x2 grid; token l must land at row l // 2, column l % 2.
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 0.0]]])
    anchors = unit_anchors([0.6, 0.8], [0.8, -0.6])
    logits = losses.similarity_logits(features, anchors)
    assert logits.shape == (1, 2, 2, 2)
    # normal: 100 * (0.6 x + 0.8 y); abnormal: 100 * (0.8 x - 0.6 y)
    assert torch.allclose(logits[0, 0], torch.tensor([[60.0, 80.0], [70.0, -60.0]]))
    assert torch.allclose(logits[0, 1], torch.tensor([[80.0, -60.0], [10.0, -80.0]]))


def test_similarity_logits_rejects_non_square_grid():
    with pytest.raises(ValueError, match="square"):
        losses.similarity_logits(torch.zeros(1, 6, 4), torch.zeros(1, 4, 2))


def test_training_probabilities_softmax_over_channels_and_corners_kept():
    logits = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    probs = losses.training_probabilities(logits, 7)
    assert probs.shape == (2, 2, 7, 7)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 7, 7))
    # align_corners=True: output grid points 0, 3, 6 sit exactly on input points 0, 1, 2.
    assert torch.allclose(probs[:, :, ::3, ::3], logits.softmax(dim=1), atol=1e-6)


PROB_ABNORMAL = [[0.9, 0.2], [0.6, 0.5]]
MASK = [[1.0, 0.0], [0.0, 1.0]]


def test_focal_loss_hand_2x2_without_smoothing():
    probs_abnormal = torch.tensor([PROB_ABNORMAL])
    probs = torch.stack((1 - probs_abnormal, probs_abnormal), dim=1)
    mask = torch.tensor([[MASK]])
    # p_t = probability of the true class per pixel: 0.9 (abn), 0.8 (normal), 0.4 (normal), 0.5 (abn)
    expected = sum(-(1 - p) ** 2 * math.log(p) for p in (0.9, 0.8, 0.4, 0.5)) / 4
    assert losses.focal_loss(probs, mask, smooth=0.0).item() == pytest.approx(expected, rel=1e-6)
    # With smooth 1e-5 the value moves only slightly.
    assert losses.focal_loss(probs, mask).item() == pytest.approx(expected, rel=1e-3)


def test_dice_loss_hand_2x2_mean_over_batch():
    prob = torch.tensor([PROB_ABNORMAL, [[0.5, 0.5], [0.5, 0.5]]])
    target = torch.tensor([MASK, [[0.0, 0.0], [0.0, 0.0]]])
    # sample 0: (2 * 1.4 + 1) / (2.2 + 2 + 1); sample 1: (0 + 1) / (2 + 0 + 1)
    expected = 1 - (3.8 / 5.2 + 1 / 3) / 2
    assert losses.dice_loss(prob, target).item() == pytest.approx(expected, rel=1e-6)


def test_segmentation_loss_perfect_is_zero_and_inverse_is_large():
    mask = torch.tensor([[MASK], [[[0.0, 0.0], [0.0, 0.0]]]])  # one anomalous image, one normal image
    perfect = torch.cat((1 - mask, mask), dim=1)
    assert losses.segmentation_loss(perfect, mask).item() == pytest.approx(0.0, abs=1e-5)
    inverse = perfect.flip(1)
    # focal alone: -(1 - 2e-5)^2 log(2e-5) ~ 10.8 per pixel; each dice term close to 1
    assert losses.segmentation_loss(inverse, mask).item() > 10.0


def test_orthogonality_loss_is_square_of_mean_dot_product():
    anchors = torch.stack((unit_anchors([1.0, 0.0], [0.6, 0.8])[0],
                           unit_anchors([1.0, 0.0], [-0.2, math.sqrt(0.96)])[0]))
    # dots 0.6 and -0.2: (mean)^2 = 0.04, whereas the mean of squares would be 0.2
    assert losses.orthogonality_loss(anchors).item() == pytest.approx(0.04, rel=1e-6)


def test_classification_loss_equals_cross_entropy_on_det_times_anchors():
    generator = torch.Generator().manual_seed(1)
    det_token = torch.randn(4, 8, generator=generator)
    anchors = F.normalize(torch.randn(4, 8, 2, generator=generator), dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    logits = torch.stack([det_token[b] @ anchors[b] for b in range(4)])
    expected = F.cross_entropy(logits, labels)
    assert torch.allclose(losses.classification_loss(det_token, anchors, labels), expected)


def test_image_raw_score_uses_abnormal_anchor():
    det_token = torch.tensor([[0.5, 0.5]])
    anchors = unit_anchors([1.0, 0.0], [0.6, 0.8])
    assert losses.image_raw_score(det_token, anchors).item() == pytest.approx((0.7 + 1) / 2)


def hot_logits(row: int, column: int, side: int = 9) -> torch.Tensor:
    logits = torch.zeros(1, 2, side, side)
    logits[0, 1, row, column] = 2.0  # map = (S_abn + 1 - S_norm) / 2: background 0.5, hot 1.5
    return logits


def centre_weight(sigma: float) -> float:
    weights = [math.exp(-0.5 * (x / sigma) ** 2) for x in (-1, 0, 1)]
    return (weights[1] / sum(weights)) ** 2  # 3x3 separable kernel, centre tap


def test_anomaly_map_blurred_peak_at_the_right_place():
    result = losses.anomaly_map(hot_logits(3, 5), size=17, blur_kernel=3, blur_sigma=1.0)
    assert result.shape == (1, 17, 17)
    # align_corners=True maps grid point (3, 5) of 9x9 to pixel (6, 10) of 17x17
    peak = divmod(int(result[0].argmax()), 17)
    assert peak == (6, 10)
    assert result[0, 6, 10].item() == pytest.approx(0.5 + centre_weight(1.0), rel=1e-5)
    assert result[0, 6, 8].item() == pytest.approx(result[0, 6, 12].item(), rel=1e-6)  # symmetric blur
    assert result[0, 0, 0].item() == pytest.approx(0.5)  # far from the peak: background


def test_anomaly_map_reflect_border_keeps_corner_peak_and_background():
    # Reflect padding mirrors without repeating the edge: a corner peak keeps the centre weight, and a
    # uniform background stays uniform (zero padding would darken the border).
    result = losses.anomaly_map(hot_logits(0, 0), size=9, blur_kernel=3, blur_sigma=1.0)
    assert result[0, 0, 0].item() == pytest.approx(0.5 + centre_weight(1.0), rel=1e-5)
    assert result[0, 8, 8].item() == pytest.approx(0.5)
    assert result[0, 8, 0].item() == pytest.approx(0.5)
