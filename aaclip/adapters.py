"""Residual adapters (reference §3.2, §4.1) with module names that match the reference's state-dict keys (§6.2),
so that existing base runs (`text_adapter.pth`, `image_adapter_N.pth`) load without key surgery."""
from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Linear without bias, optionally followed by LeakyReLU (the reference's SimpleAdapter / SimpleProj)."""

    def __init__(self, in_dim: int, out_dim: int, activation: bool = True):
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.xavier_uniform_(linear.weight)
        # Key layout: with activation "fc.0.weight", without "fc.weight", as in the reference checkpoints.
        self.fc = nn.Sequential(linear, nn.LeakyReLU()) if activation else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def norm_matched_residual(x: torch.Tensor, adapter: nn.Module, weight: float) -> torch.Tensor:
    """x <- w * a * |x| / |a| + (1 - w) * x, per token: the adapter changes direction, never the token norm scale.

    The reference divides without an epsilon; a tiny floor only matters for an all-zero adapter output.
    """
    adapted = adapter(x)
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weight * adapted + (1.0 - weight) * x
