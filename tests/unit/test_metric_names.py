"""aaclip/metric_names.py is where the reported metrics are named: the names stay those of DESIGN §4, and no other
module of the project spells one (the trainer builds them there, the study reads them from there)."""
from __future__ import annotations

import re
from pathlib import Path

from aaclip.metric_names import GRADIENT_NORMS, IMAGE_ADAPTER_SHARE, LOSSES, REPORTED_METRICS, evaluation

REPO = Path(__file__).resolve().parents[2]


def test_the_documented_names():
    assert LOSSES == ("train/text_loss", "train/image_loss")
    assert GRADIENT_NORMS == ("grad/text_adapter", "grad/text_cross_attn", "grad/image_adapter",
                              "grad/image_cross_attn")
    assert IMAGE_ADAPTER_SHARE == "grad/image_adapter_share"
    assert evaluation("pixel_auroc") == "val/pixel_auroc"
    assert evaluation("pixel_ap", "bottle", split="test") == "test/bottle/pixel_ap"
    documented = {"loop", "epoch", "scale/text", "scale/image", "lr/image", "time/epoch_s", "val/image_ap"}
    assert documented <= REPORTED_METRICS


def test_no_other_module_spells_a_metric_name():
    pattern = re.compile(r"[\"'](?:train|grad|scale|lr|time|memory)/[a-z_]+[\"']")
    spelled = {str(path.relative_to(REPO)): pattern.findall(path.read_text())
               for package in ("aaclip", "study") for path in sorted((REPO / package).rglob("*.py"))
               if path.name != "metric_names.py"}
    assert {name: found for name, found in spelled.items() if found} == {}
