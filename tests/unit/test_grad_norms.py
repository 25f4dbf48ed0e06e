"""Logged gradient norms are accumulated in float64 (grad/*, grad/image_adapter_share, the diagnostic's ratio)."""
from __future__ import annotations

import math

import torch
from torch import nn

from aaclip.train import group_norms


def test_group_norms_match_a_float64_sum_of_squares() -> None:
    torch.manual_seed(0)
    parameters = [nn.Parameter(torch.zeros(size)) for size in (300_000, 333, 7)]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter) * 1e-3
    norms = group_norms({"adapter": parameters, "empty": []})
    exact = math.sqrt(math.fsum(float(v) ** 2 for p in parameters for v in p.grad.double().flatten().tolist()))
    assert math.isclose(norms["adapter"], exact, rel_tol=1e-12)
    assert norms["empty"] == 0.0
