"""AdaptedCLIP: a frozen open_clip CLIP with residual adapters, projections and cross-attention (reference §3–§7).

Pure nn.Module: training logic lives in aaclip.train. Shapes: B images, C classes, P prompts per class,
T text tokens, L patch tokens, E joint embedding width; text/vision widths come from the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from aaclip import prompts
from aaclip.adapters import Adapter, norm_matched_residual
from aaclip.attention import block_forward, is_causal_mask
from aaclip.backbone import check_batch_first, describe, text_embed, vision_embed
from aaclip.config import AdapterConfig, CrossAttentionConfig
from aaclip.cross_attention import CrossAttention

NORMAL_PROMPTS = len(prompts.NORMAL_STATES) * len(prompts.TEMPLATES)


@dataclass
class ImageFeatures:
    seg_tokens: list[torch.Tensor]  # per level [B, L, E], unit norm
    det_token: torch.Tensor  # [B, E], mean of unit vectors (norm <= 1, reference §4.2)


@dataclass(frozen=True)
class Surgery:
    """The V-V "surgery" tower of the loop-1 Stage-1 targets (reference §4.3): V-V attention in
    blocks[from_block:], over `axis` ("tokens" or "batch", aaclip.attention.value_value_attention)."""
    from_block: int
    axis: str


def compiled_block_forward():
    """torch.compile of the frozen block computation (model.compile). Parameters are graph inputs
    (inlined nn.Modules), so blocks of one tower share a graph instead of recompiling per block."""
    return torch.compile(block_forward, dynamic=False)


class AdaptedCLIP(nn.Module):
    """Takes the architecture's own settings, as open_clip's CLIP takes its tower configs: whether they fit the
    backbone is the factory's check (aaclip.factory), which names the config keys."""

    def __init__(self, clip: CLIP, adapters: AdapterConfig, cross_attention: CrossAttentionConfig,
                 surgery: Surgery, compile_blocks: bool = False):
        super().__init__()
        check_batch_first(clip)
        self.info = info = describe(clip)
        self.clip = clip
        self.adapters_config = adapters
        self.surgery = surgery
        width_t, width_v, embed = info.text_width, info.vision_width, info.embed_dim
        self.text_adapter = nn.ModuleList(
            [Adapter(width_t, width_t) for _ in range(adapters.text_until)] + [Adapter(width_t, embed)])
        relu = adapters.proj_relu
        self.image_adapter = nn.ModuleDict({
            "layer_adapters": nn.ModuleList(Adapter(width_v, width_v) for _ in range(adapters.image_until)),
            "seg_proj": nn.ModuleList(Adapter(width_v, embed, relu) for _ in adapters.levels),
            "det_proj": Adapter(width_v, embed, relu),
        })
        cross = cross_attention
        shared = dict(heads=cross.heads, dropout=cross.dropout, norm_match=cross.norm_match, inner_dim=width_t)
        # Stage-1 image context is unit patch features + unit CLS (reference §7.4), not normalised further.
        self.text_cross_attn = CrossAttention(width_t, embed, scale=cross.text_scale.init,
                                              learnable_scale=cross.text_scale.learnable, normalize_context=False,
                                              **shared)
        self.image_cross_attn = CrossAttention(width_v, width_t, scale=cross.image_scale.init,
                                               learnable_scale=cross.image_scale.learnable,
                                               normalize_context=cross.normalize_context, **shared)
        # Frozen blocks run batch-first over open_clip's weights (aaclip.attention); `stock_blocks` switches to
        # open_clip's own block(x) path, which the equivalence tests and the step benchmark compare against.
        self.stock_blocks = False
        self.text_causal = is_causal_mask(clip.attn_mask)  # decided once: checking per call would sync a GPU
        self._block_forward = compiled_block_forward() if compile_blocks else block_forward

    def run_block(self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  value_value: str | None = None) -> torch.Tensor:
        if self.stock_blocks and value_value is None:
            return block(x, attn_mask=attn_mask)
        causal = attn_mask is not None and self.text_causal
        return self._block_forward(block, x, attn_mask, value_value, causal)

    def text_length(self, flat_tokens: torch.Tensor) -> int:
        """Tokens the text tower must run to produce every sentence's EOT output.

        With a causal mask (open_clip's text tower) and per-token adapters and cross-attention queries, a
        token's output depends only on the tokens before it: the padding after the batch's last EOT never
        reaches an EOT output. Prompts are ~10-15 tokens of 77, so this cuts the Stage-1 text tower ~5x.
        """
        if not self.text_causal:
            return flat_tokens.shape[1]
        return int(flat_tokens.argmax(dim=-1).max()) + 1

    def train(self, mode: bool = True) -> AdaptedCLIP:
        super().train(mode)
        self.clip.eval()  # frozen CLIP never leaves eval mode
        return self

    # ---------------------------------------------------------------------------------------------------------
    # Text

    def encode_text(self, tokens: torch.Tensor, image_context: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted text forward -> [C*P, E] (not normalised). tokens [C, P, T]; image_context [C, L, E] or None.

        Cross-attention is per class: the P prompts of a class all attend to that class's context. Queries
        attend independently, so the prompts of a class are simply concatenated into one query sequence.
        """
        classes, per_class, _ = tokens.shape
        flat = tokens.reshape(classes * per_class, -1)
        length = self.text_length(flat)
        flat = flat[:, :length]
        mask = self.clip.attn_mask[:length, :length]
        x = text_embed(self.clip, flat)
        for index, block in enumerate(self.clip.transformer.resblocks):
            x = self.run_block(block, x, attn_mask=mask)
            if index == 0 and image_context is not None:
                grouped = x.reshape(classes, per_class * length, -1)
                x = self.text_cross_attn(grouped, image_context).reshape(classes * per_class, length, -1)
            if index < len(self.text_adapter) - 1:
                x = norm_matched_residual(x, self.text_adapter[index], self.adapters_config.text_weight)
        x = self.clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), flat.argmax(dim=-1)]
        return self.text_adapter[-1](eot)

    def class_anchors(self, tokens: torch.Tensor, image_context: torch.Tensor | None = None) -> torch.Tensor:
        """[C, E, 2] unit anchors: column 0 normal, column 1 abnormal (reference §3.3)."""
        classes, per_class, _ = tokens.shape
        sentences = F.normalize(self.encode_text(tokens, image_context), dim=-1).reshape(classes, per_class, -1)
        normal = F.normalize(sentences[:, :NORMAL_PROMPTS].mean(dim=1), dim=-1)
        abnormal = F.normalize(sentences[:, NORMAL_PROMPTS:].mean(dim=1), dim=-1)
        return torch.stack([normal, abnormal], dim=-1)

    @torch.no_grad()
    def text_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """[C, P*T, text width]: prompt tokens after text block 0 and adapter 0 (reference §7.4), for Stage 2."""
        classes, per_class, length = tokens.shape
        x = self.run_block(self.clip.transformer.resblocks[0], text_embed(self.clip, tokens.reshape(-1, length)),
                           attn_mask=self.clip.attn_mask)
        if len(self.text_adapter) > 1:
            x = norm_matched_residual(x, self.text_adapter[0], self.adapters_config.text_weight)
        return x.reshape(classes, per_class * length, -1)

    # ---------------------------------------------------------------------------------------------------------
    # Image

    def encode_image(self, images: torch.Tensor, text_context: torch.Tensor | None = None) -> ImageFeatures:
        """Adapted vision forward. text_context [B, P*T, text width] switches image cross-attention on."""
        levels = self.adapters_config.levels
        layer_adapters = self.image_adapter["layer_adapters"]
        x = vision_embed(self.clip, images)
        taps = []
        for index, block in enumerate(self.clip.visual.transformer.resblocks[: levels[-1]]):
            x = self.run_block(block, x)
            if index == 0 and text_context is not None:
                x = self.image_cross_attn(x, text_context)
            if index < len(layer_adapters):
                x = norm_matched_residual(x, layer_adapters[index], self.adapters_config.image_weight)
            if index + 1 in levels:
                taps.append(self.clip.visual.ln_post(x[:, 1:]))
        seg_tokens = [F.normalize(proj(tap), dim=-1) for proj, tap in zip(self.image_adapter["seg_proj"], taps)]
        det_token = F.normalize(self.image_adapter["det_proj"](taps[-1]), dim=-1).mean(dim=1)
        return ImageFeatures(seg_tokens, det_token)

    @torch.no_grad()
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Plain CLIP image embedding ln_post(CLS) @ proj of the un-adapted tower, unit norm ("CLS_24")."""
        return F.normalize(self.clip.encode_image(images), dim=-1)

    @torch.no_grad()
    def frozen_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Stage-1 targets of loop 1 from the V-V "surgery" tower: [B, K, L, E] (reference §4.3).

        Per level: unit(ln_post(tokens) @ proj) + unit CLS; level 0 doubles as the loop-1 image context.
        """
        levels = self.adapters_config.levels
        x = vision_embed(self.clip, images)
        taps = []
        for index, block in enumerate(self.clip.visual.transformer.resblocks[: levels[-1]]):
            axis = self.surgery.axis if index >= self.surgery.from_block else None
            x = self.run_block(block, x, value_value=axis)
            if index + 1 in levels:
                taps.append(F.normalize(self.clip.visual.ln_post(x[:, 1:]) @ self.clip.visual.proj, dim=-1))
        global_embedding = self.global_embedding(images)[:, None, :]
        return torch.stack([tap + global_embedding for tap in taps], dim=1)

    @torch.no_grad()
    def adapted_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Stage-1 targets of loops >= 2: the adapted tower's own features (no cross-attention) + unit CLS.

        Level 0 is the output after `levels[0]` blocks, the same depth seg_proj[0] was trained on: the
        reference's 7-block context (§13.8) is not reproduced.
        """
        features = self.encode_image(images)
        global_embedding = self.global_embedding(images)[:, None, :]
        return torch.stack([tokens + global_embedding for tokens in features.seg_tokens], dim=1)

    # ---------------------------------------------------------------------------------------------------------
    # Parameter groups

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four groups whose gradient norms are reported; a fixed scale is a buffer, not a parameter."""
        return {
            "text_adapter": list(self.text_adapter.parameters()),
            "text_cross_attn": list(self.text_cross_attn.parameters()),
            "image_adapter": list(self.image_adapter.parameters()),
            "image_cross_attn": list(self.image_cross_attn.parameters()),
        }

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything that is not the frozen CLIP: adapters, projections, cross-attention (incl. scales)."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("clip.")}
