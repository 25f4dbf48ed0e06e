"""Gradient-flow diagnostic (reference §9, DESIGN §4): does image cross-attention starve the image adapters?

Same seed, same batch, same weights: one Stage-2 backward with image cross-attention and one without; the
ratio of the image-adapter gradient norms (with / without) is the share of gradient the adapters keep.
The reference reported 0.37 for the unscaled residual and 0.96 with a 0.1 scale.

The failure needs a raw text context whose per-token norm is large (~17 with OpenAI weights, §7.4). A random-init
text tower gives ~3, where even the unscaled residual is harmless; `context_norm` rescales the raw context to a
chosen per-token norm so the regime of pretrained weights can be reproduced on a tiny random backbone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from aaclip.config import TrainConfig, apply_overrides, validate_config
from aaclip.schedule import IMAGE, StagePlan
from aaclip.session import build_session
from aaclip.stages import image_stage_inputs, image_stage_loss
from aaclip.train import apply_init, group_norms

OK_THRESHOLD = 0.8
# The three states of the extension's history (reference §7.3, §9), as config overrides.
VARIANTS = {
    "unscaled": {"cross_attention.image_scale.init": 1.0, "cross_attention.norm_match": False,
                 "cross_attention.normalize_context": False},
    "scaled-0.1": {"cross_attention.image_scale.init": 0.1, "cross_attention.norm_match": False,
                   "cross_attention.normalize_context": False},
    "complete-fix": {"cross_attention.image_scale.init": 0.1, "cross_attention.norm_match": True,
                     "cross_attention.normalize_context": True},
}


@dataclass
class GradientReport:
    variant: str
    without_cross_attention: float
    with_cross_attention: float
    ratio: float
    verdict: str
    cross_attention_norm: float
    context_token_norm: float


def image_adapter_gradients(config: TrainConfig, variant: str = "config",
                            context_norm: float | None = None) -> GradientReport:
    session = build_session(config)
    apply_init(session)
    plan = StagePlan(loop=1, stage=IMAGE, epochs=1)
    inputs = image_stage_inputs(session.model, session.train_tokens, with_text_context=True)
    context = inputs.text_context
    if context_norm is not None:
        context = context / context.norm(dim=-1, keepdim=True) * context_norm
    batch = next(iter(session.data.loader(plan, 0)))
    session.model.train()
    norms = {}
    for use_cross_attention in (False, True):
        session.model.zero_grad(set_to_none=True)
        stage_inputs = replace(inputs, text_context=context if use_cross_attention else None)
        image_stage_loss(session.model, batch, stage_inputs, session.stage_settings).backward()
        norms[use_cross_attention] = group_norms({k: session.groups[k]
                                                  for k in ("image_adapter", "image_cross_attn")})
    without, with_ = norms[False]["image_adapter"], norms[True]["image_adapter"]
    ratio = with_ / without if without > 0 else float("nan")
    verdict = "OK" if ratio > OK_THRESHOLD else "CAUTION"
    context_token_norm = context.norm(dim=-1).mean().item()
    return GradientReport(variant, without, with_, ratio, verdict, norms[True]["image_cross_attn"],
                          context_token_norm)


def compare_variants(config: TrainConfig, context_norm: float | None = None) -> list[GradientReport]:
    reports = []
    for name, overrides in VARIANTS.items():
        varied = validate_config(apply_overrides(config.to_dict(), {"cross_attention.enabled": True, **overrides}))
        reports.append(image_adapter_gradients(varied, name, context_norm))
    return reports


def as_dicts(reports: list[GradientReport]) -> list[dict]:
    return [asdict(report) for report in reports]


def format_report(report: GradientReport) -> str:
    return (f"{report.variant:>13}  image-adapter grad norm without cross-attn {report.without_cross_attention:.6f}"
            f"  with {report.with_cross_attention:.6f}  ratio {report.ratio:.4f}  {report.verdict}"
            f"  (raw text context norm {report.context_token_norm:.1f})")

