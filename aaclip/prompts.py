"""Prompt ensembles for class anchors (reference §3.1, §11.3).

Each class has a "real name" that fills the state phrases; every state goes into every template, giving
6 normal and 10 abnormal sentences per class.
"""
from __future__ import annotations

from aaclip.errors import DataError

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")

MVTEC_NAMES = {
    "bottle": "dark bottle", "cable": "top view of three cables", "capsule": "black and orange capsule",
    "carpet": "gray carpet", "grid": "metal or plastic mesh", "hazelnut": "single brown hazelnut",
    "leather": "brown leather", "metal_nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved", "screw": "screw",
    "tile": "speckled tile surface", "transistor": "a three-legged transistor placed vertically",
    "toothbrush": "toothbrush head", "wood": "wood surface", "zipper": "a black zipper",
}
VISA_NAMES = {
    "candle": "candle", "pcb3": "infrared sensor pcb module", "capsules": "capsules",
    "pipe_fryum": "pipe-shaped fryum", "pcb4": "battery charging pcb module",
    "macaroni2": "scattered yellow macaroni", "pcb2": "integrated circuits board", "chewinggum": "chewing gum",
    "macaroni1": "orange macaroni", "cashew": "cashew nut", "fryum": "wheel-shaped fryum snack",
    "pcb1": "dual ultrasonic distance sensor pcb module",
}
# Classes of the generated datasets (aaclip.data.synthetic), two domains for the zero-shot protocol.
SYNTHETIC_DOMAINS = {
    "texture": {"weave": "woven fabric", "granite": "speckled granite surface", "planks": "wooden planks"},
    "object": {"disc": "round metal disc", "tablet": "white oval tablet", "ring": "rubber ring"},
}
KNOWN_NAMES = {
    **MVTEC_NAMES, **VISA_NAMES, "object": "object",
    **{name: real for domain in SYNTHETIC_DOMAINS.values() for name, real in domain.items()},
}


def real_name(class_name: str, overrides: dict[str, str] | None = None) -> str:
    if overrides and class_name in overrides:
        return overrides[class_name]
    if class_name in KNOWN_NAMES:
        return KNOWN_NAMES[class_name]
    raise DataError(
        f"class {class_name!r} has no prompt name: add it to the dataset's prompt_names "
        f"(e.g. prompt_names: {{{class_name}: 'a short description'}})"
    )


def sentences(class_name: str, overrides: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(normal sentences, abnormal sentences), ordered state-major then template as in the reference."""
    name = real_name(class_name, overrides)
    normal = [template.format(state.format(name)) for state in NORMAL_STATES for template in TEMPLATES]
    abnormal = [template.format(state.format(name)) for state in ABNORMAL_STATES for template in TEMPLATES]
    return normal, abnormal
