"""Bidirectional cross-attention between the branches (reference §7), one module for both directions.

text -> image (Stage 1): queries are text tokens after text block 0, keys/values the image context.
image -> text (Stage 2): queries are image tokens after ViT block 0, keys/values the text context.
The residual is what the extension's "complete fix" settled on: x + scale * c_hat, where c_hat is the
attention output rescaled to the query token's norm (norm_match) and the context is L2-normalised per token
(normalize_context). Both are switches so that the failure they fix can be reproduced and measured.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, inner_dim: int, heads: int, dropout: float,
                 scale: float, learnable_scale: bool, norm_match: bool, normalize_context: bool):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm_match = norm_match
        self.normalize_context = normalize_context
        self.q_proj = nn.Linear(query_dim, inner_dim)
        self.k_proj = nn.Linear(context_dim, inner_dim)
        self.v_proj = nn.Linear(context_dim, inner_dim)
        self.out_proj = nn.Linear(inner_dim, query_dim)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        initial = torch.tensor(float(scale))
        if learnable_scale:
            self.scale = nn.Parameter(initial)
        else:
            self.register_buffer("scale", initial)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The raw cross-attention output c: [N, Lq, query_dim]; context batch is N or 1 (broadcast)."""
        if self.normalize_context:
            context = F.normalize(context, dim=-1)
        query = self._split(self.q_proj(x))
        key = self._split(self.k_proj(context)).expand(query.shape[0], -1, -1, -1)
        value = self._split(self.v_proj(context)).expand(query.shape[0], -1, -1, -1)
        dropout = self.dropout if self.training else 0.0
        mixed = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        return self.out_proj(mixed.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        update = self.attend(x, context)
        if self.norm_match:
            update = update * x.norm(dim=-1, keepdim=True) / (update.norm(dim=-1, keepdim=True) + 1e-6)
        return x + self.scale * update
