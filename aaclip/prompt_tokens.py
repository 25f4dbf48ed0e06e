"""Prompt tokens of class names for one backbone's tokenizer (reference §3.1): what the text tower reads.

The tokenizer belongs to the backbone's name, not to the adapted model: the model takes token tensors, as
open_clip's CLIP does, and the session holds the tokenizer beside it.
"""
from __future__ import annotations

import open_clip
import torch

from aaclip import prompts


class PromptTokenizer:
    def __init__(self, model_name: str):
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def __call__(self, class_names: list[str], prompt_names: dict[str, str] | None = None) -> torch.Tensor:
        """[C, P, T] prompt tokens, normal sentences first (reference §3.1)."""
        per_class = []
        for name in class_names:
            normal, abnormal = prompts.sentences(name, prompt_names)
            per_class.append(self.tokenizer(normal + abnormal))
        return torch.stack(per_class)
