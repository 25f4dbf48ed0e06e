"""Checkpoints: everything needed to continue bit-for-bit on CPU, written atomically, read with weights_only.

A checkpoint is a directory:
    adapters.pt   trainable weights only (adapters, projections, cross-attention): the artifact people share
    state.pt      optimizer states, position in the feedback schedule, RNG state, metric history, config digest
    config.yaml   the full TrainConfig that produced it

A registered model (aaclip/mlflow_model.py) carries the trainable weights as adapters.safetensors instead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from aaclip.config import TrainConfig
from aaclip.errors import CheckpointError

FORMAT = "aaclip-checkpoint-v1"


def save_checkpoint(folder: Path, adapters: dict[str, torch.Tensor], state: dict[str, Any],
                    config: TrainConfig) -> Path:
    """Write into a temp dir beside `folder`, then swap it in: a reader never sees half a checkpoint."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    torch.save({key: value.detach().cpu() for key, value in adapters.items()}, staging / "adapters.pt")
    torch.save({"format": FORMAT, "architecture": config.model.name, "config_digest": config.digest(), **state},
               staging / "state.pt")
    (staging / "config.yaml").write_text(config.to_yaml())
    if folder.exists():
        retired = folder.with_name(f".{folder.name}-old-{os.getpid()}")
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, folder)
    return folder


def _load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: not a checkpoint (no {path.name}); pass a directory written by "
                              f"`aaclip train` or a study trial")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable {what} ({error.__class__.__name__})") from None


def load_state(folder: Path, config: TrainConfig) -> dict[str, Any]:
    state = _load(Path(folder) / "state.pt", "checkpoint state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{folder}/state.pt: not an aaclip checkpoint")
    if state["architecture"] != config.model.name:
        raise CheckpointError(f"{folder}: checkpoint is for {state['architecture']}, config uses {config.model.name}")
    if state["config_digest"] != config.digest():
        raise CheckpointError(f"{folder}: checkpoint was written with a different configuration; resume it with "
                              f"its own config.yaml")
    return state


def load_adapters(folder: Path) -> dict[str, torch.Tensor]:
    adapters = _load(Path(folder) / "adapters.pt", "adapter file")
    if not isinstance(adapters, dict) or not all(isinstance(v, torch.Tensor) for v in adapters.values()):
        raise CheckpointError(f"{folder}/adapters.pt: not a dict of tensors")
    return adapters


def load_trained(model: nn.Module, folder: Path) -> None:
    """A checkpoint's trainable weights into a model whose frozen CLIP is already built."""
    folder = Path(folder)
    load_trainable(model, load_adapters(folder), str(folder / "adapters.pt"))


def load_trainable(model: nn.Module, adapters: dict[str, torch.Tensor], source: str) -> None:
    """Trainable weights (adapters, projections, cross-attention) hold only the trainable part: the model's own
    CLIP weights complete the strict load."""
    frozen = {key: value for key, value in model.state_dict().items() if key.startswith("clip.")}
    load_into(model, adapters | frozen, source)


def write_safetensors(adapters: dict[str, torch.Tensor], path: Path) -> Path:
    """Adapters as safetensors (the registry's format: no pickle, loadable without this project's code)."""
    save_file({key: value.detach().cpu().contiguous() for key, value in adapters.items()}, str(path))
    return Path(path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors adapter file ({error})") from None


def load_into(module: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a message that names the first offending key instead of a wall of text."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        key = (missing or unexpected)[0]
        kind = "missing" if missing else "unexpected"
        raise CheckpointError(f"{source}: {kind} key {key!r}: written for another architecture or configuration")
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, this model needs "
                                  f"{tuple(expected[key].shape)}: written for another architecture")
    module.load_state_dict(weights, strict=True)


def read_base_adapters(path: str, part: str) -> dict[str, torch.Tensor]:
    """Start weights for `part` ("text_adapter" or "image_adapter") from this project's checkpoint directory or
    from the reference implementation's `text_adapter.pth` / `image_adapter_N.pth` files (reference §6.2)."""
    source = Path(path).expanduser()
    if source.is_dir():
        prefix = f"{part}."
        weights = {k[len(prefix):]: v for k, v in load_adapters(source).items() if k.startswith(prefix)}
    else:
        if not source.is_file():
            raise CheckpointError(f"init.{part}: {source} does not exist")
        content = _load(source, "reference checkpoint")
        if not isinstance(content, dict) or part not in content:
            raise CheckpointError(f"init.{part}: {source} has no {part!r} entry (not a reference checkpoint)")
        weights = content[part]
    if not weights:
        raise CheckpointError(f"init.{part}: {source} contains no {part} weights")
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise CheckpointError(f"init.{part}: {source}: its {part!r} entry is not a dict of tensors")
    return weights
