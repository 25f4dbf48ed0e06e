"""Batch-first attention over the frozen open_clip blocks' own weights (DESIGN §9).

open_clip's `ResidualAttentionBlock` calls `nn.MultiheadAttention(batch_first=True)`, which transposes its input
to a non-contiguous (L, B, E) view. Whenever that input requires grad (every block after the first adapter) the
fused fast path is off and `F.linear` on the view runs as a batched product with the weight expanded per token:
about 1.5x slower per block than the same weights applied batch-first. Here the same computation runs as
`F.linear` on contiguous (B, L, E) tensors and `scaled_dot_product_attention`, which also picks the flash or
memory-efficient kernels on a GPU. open_clip stays the owner of the weights and the architecture: only the path
through them changes, and any block this does not recognise runs through its own `forward`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


def supports_fast_path(block: nn.Module) -> bool:
    """A plain open_clip block whose attention is an unmodified multi-head attention in eval mode."""
    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn = block.attn
    plain = attn.in_proj_weight is not None and attn.bias_k is None and not attn.add_zero_attn
    return plain and attn.batch_first and not (attn.training and attn.dropout > 0)


def block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  value_value: str | None = None, causal: bool = False) -> torch.Tensor:
    """`block(x, attn_mask=...)` of open_clip, batch-first; `value_value` ("tokens"/"batch") is V-V attention.

    `causal`: attn_mask is the plain causal mask, so SDPA may use is_causal, which the flash kernel serves.
    """
    if value_value is None and not supports_fast_path(block):
        return block(x, attn_mask=attn_mask)
    normed = block.ln_1(x)
    if value_value is None:
        attention = self_attention(block.attn, normed, None if causal else attn_mask, causal)
    else:
        attention = value_value_attention(block.attn, normed, axis=value_value)
    x = x + block.ls_1(attention)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """open_clip's text mask: additive, -inf strictly above the diagonal, 0 elsewhere."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[above]).all() and (mask[~above] == 0).all())


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, E] -> [B, H, L, E/H]."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d] -> [B, L, H*d], contiguous for the output projection."""
    batch, heads, tokens, depth = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * depth)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   causal: bool = False) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x, attn_mask) with the module's weights, on contiguous batch-first tensors."""
    query, key, value = F.linear(x.contiguous(), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    if attn_mask is not None:
        attn_mask = attn_mask.to(x.dtype)  # open_clip's text mask is additive (-inf above the diagonal)
    mixed = F.scaled_dot_product_attention(split_heads(query, heads), split_heads(key, heads),
                                           split_heads(value, heads), attn_mask=attn_mask, is_causal=causal)
    return F.linear(merge_heads(mixed), attn.out_proj.weight, attn.out_proj.bias)


def value_value_attention(attn: nn.MultiheadAttention, x: torch.Tensor, axis: str) -> torch.Tensor:
    """softmax(V V^T / sqrt(d)) V with the block's own projections (reference §2.4, DPAM).

    Only the value third of the in-projection is computed: queries and keys are never used.
    axis "tokens": each image's tokens attend to each other (the intended V-V attention).
    axis "batch": at each token position the images of the batch attend to each other, which is what the
    reference computes because it feeds a (tokens, batch, width) tensor to a batch-first module.
    """
    width = x.shape[-1]
    bias = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    value = split_heads(F.linear(x.contiguous(), attn.in_proj_weight[2 * width:], bias), attn.num_heads)
    if axis == "batch":
        value = value.permute(2, 1, 0, 3)  # [L, H, B, d]: attention runs over the batch
    mixed = F.scaled_dot_product_attention(value, value, value)
    if axis == "batch":
        mixed = mixed.permute(2, 1, 0, 3)
    return F.linear(merge_heads(mixed), attn.out_proj.weight, attn.out_proj.bias)
