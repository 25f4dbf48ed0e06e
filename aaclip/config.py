"""The one training configuration: YAML -> TrainConfig -> flat MLflow params -> export -> YAML.

Every place that reads or writes a configuration (the CLI, a study trial, MLflow, export) goes through this
schema, so a key that is wrong anywhere is wrong everywhere, with the same message.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from aaclip.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


@dataclass(frozen=True)
class PathField:
    """Marks a field that holds a file-system path: a study resolves it against the driver's folder."""
    or_tag: bool = False  # the value may instead be a name (an open_clip pretrained tag): no slash, no suffix


PathOrNone = Annotated[str | None, PathField()]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = "ViT-L-14-336"
    # An open_clip pretrained tag ("openai"), a local weights file, or null for random init (tests only).
    pretrained: Annotated[str | None, PathField(or_tag=True)] = "openai"
    image_size: int = Field(518, gt=0)
    quick_gelu: bool | None = None  # null: follow the weights (QuickGELU for OpenAI weights, reference Q1)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast is used on GPU only (DESIGN §8)
    device: str = "auto"  # auto -> cuda when available, else cpu
    compile: bool = False  # torch.compile the frozen blocks (pays off on a GPU for long runs; off by default)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE_PATTERN.match(device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device


class AdapterConfig(Strict):
    text_until: int = Field(3, ge=0)  # adapters after text blocks[0..text_until-1]
    image_until: int = Field(6, ge=0)
    text_weight: float = Field(0.1, ge=0.0, le=1.0)
    image_weight: float = Field(0.1, ge=0.0, le=1.0)
    levels: list[int] = Field(default_factory=lambda: [6, 12, 18, 24], min_length=1)
    proj_relu: bool = False

    @field_validator("levels")
    @classmethod
    def _levels_sorted(cls, levels: list[int]) -> list[int]:
        if sorted(set(levels)) != levels or levels[0] < 1:
            raise ValueError("levels must be increasing block counts >= 1")
        return levels


class ScaleConfig(Strict):
    init: float = Field(0.1, ge=0.0)
    learnable: bool = False


class CrossAttentionConfig(Strict):
    enabled: bool = True
    heads: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    text_scale: ScaleConfig = Field(default_factory=ScaleConfig)
    image_scale: ScaleConfig = Field(default_factory=ScaleConfig)
    norm_match: bool = True  # reference §7.3: residual rescaled to the token norm
    normalize_context: bool = True  # reference §7.4: text context L2-normalised per token
    at_inference: bool = False  # reference never uses it at test time (§7.6)
    start_loop: int = Field(1, ge=1)


class Stage1Config(Strict):
    surgery_from_block: int = Field(5, ge=0)  # V-V attention in blocks[surgery_from_block:]
    surgery_axis: Literal["tokens", "batch"] = "tokens"
    loss_levels: Literal["all", "last"] = "all"
    ortho_weight: float = Field(0.1, ge=0.0)


class FeedbackConfig(Strict):
    loops: int = Field(3, ge=1)
    text_epochs: int = Field(5, ge=0)
    image_epochs: int = Field(20, ge=1)
    epoch_decay: float = Field(0.8, gt=0.0, le=1.0)  # epochs of loop n = max(1, round(epochs * decay^(n-1)))
    lr_decay: float = Field(0.5, gt=0.0, le=1.0)  # lr of loop n = lr * decay^(n-1)
    reset_optimizer: bool = True  # reference: fresh optimizer each loop


class OptimConfig(Strict):
    text_lr: float = Field(1e-5, gt=0.0)
    image_lr: float = Field(5e-4, gt=0.0)
    cross_attn_lr: float | None = Field(None, gt=0.0)  # null -> the stage's lr
    kind: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "multistep", "cosine"] = "multistep"  # Stage 2 (reference: multistep)
    text_schedule: Literal["constant", "multistep", "cosine"] = "constant"  # Stage 1 (reference: none)
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.8])  # fractions of a stage's steps
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0.0 < b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in (0, 1), got {list(self.betas)}")
        if not all(0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(f"milestones are fractions of a stage in (0, 1), got {self.milestones}")
        return self


class HoldoutConfig(Strict):
    """A seeded split of one dataset by image: `held_out` (e.g. val) and its `remainder` (e.g. test).

    The same fraction and seed on both sides give complementary parts: every image is in exactly one. Drawn per
    (class, label) so both parts keep the dataset's class and normal/anomalous mix (aaclip.data.splits).
    """
    part: Literal["held_out", "remainder"]
    fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share of each (class, label) group that is held out
    seed: int = 0


class DatasetSpec(Strict):
    kind: Literal["mvtec", "visa", "jsonl", "synthetic"]
    root: PathOrNone = None  # synthetic: defaults to $AACLIP_HOME/data/synthetic-<domain>-<seed>
    categories: list[str] | None = None
    split: str = "test"  # the reference trains and evaluates on the datasets' test splits (§6.3)
    holdout: HoldoutConfig | None = None  # applied after categories, before shots
    shots: int | None = Field(None, ge=1)  # k images per class per label, seeded
    seed: int = 0
    domain: str | None = None  # synthetic only: which generated domain
    prompt_names: dict[str, str] = Field(default_factory=dict)  # class -> real name used in prompts

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.kind == "synthetic" and not self.domain:
            raise ValueError("a synthetic dataset needs a domain (e.g. domain: texture)")
        if self.kind != "synthetic" and not self.root:
            raise ValueError(f"a {self.kind} dataset needs a root folder")
        return self


class DataConfig(Strict):
    train: DatasetSpec
    val: DatasetSpec
    test: DatasetSpec | None = None
    seed: int = 0  # drives augmentation draws only (common random numbers across trials)
    augment: bool = True
    text_batch: int = Field(16, ge=1)
    image_batch: int = Field(2, ge=1)
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _val_is_not_test(self) -> DataConfig:
        # The cheap check on the configs; aaclip.data.splits compares the resolved files of both splits.
        if self.test is not None and self.val == self.test:
            raise ValueError("data.val equals data.test: a study must never select on test data")
        return self


class BlurConfig(Strict):
    kernel: int = Field(7, ge=1)
    sigma: float = Field(1.0, gt=0.0)

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:  # a Gaussian blur needs a centre pixel; an even kernel would shift every map
            raise ValueError("must be odd (e.g. 3, 5, 7)")
        return kernel


class EvalConfig(Strict):
    every: Literal["loop", "epoch"] = "loop"
    loop0: bool = True  # also evaluate the starting point (loop 0) once, before any training: curves start there
    max_images: int | None = Field(None, ge=1)  # a fixed, seeded subset for cheap intermediate checks
    batch: int = Field(8, ge=1)
    blur: BlurConfig = Field(default_factory=BlurConfig)
    image_score_mix: float = Field(0.5, ge=0.0, le=1.0)  # weight of the map maximum in the image score
    aupro: bool = True


class InitConfig(Strict):
    text_adapter: PathOrNone = None  # this project's checkpoint dir or the reference's text_adapter.pth
    image_adapter: PathOrNone = None


class CacheConfig(Strict):
    features: bool = True
    dir: PathOrNone = None  # default $AACLIP_HOME/cache/features


class TrainConfig(Strict):
    seed: int = 111  # model init and batch order
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapters: AdapterConfig = Field(default_factory=AdapterConfig)
    cross_attention: CrossAttentionConfig = Field(default_factory=CrossAttentionConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """A short hash of the configuration, stored in checkpoints to refuse a foreign resume."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Reading, overriding, flattening


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line: `source: dotted.key: message (got value)`."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or first["type"] in ("missing", "extra_forbidden") else f" (got {value!r})"
    return f"{source}: {key}: {message}{shown}"


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped config (`tiny`, `vit-l-14-336`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such config file or shipped config (shipped: {names})")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError:  # UnicodeDecodeError: a binary file, e.g. a checkpoint passed as the config
        raise ConfigError(f"{path}: not a text YAML file (binary content); pass a config YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    data.pop("provenance", None)  # written by `aaclip-study export`; informative only
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return validate_config(data, source=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.image_lr=1e-3` -> ("optim.image_lr", 0.001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.image_lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML reads 1e-3 as a string; numbers should be numbers
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy). Unknown keys are caught by validation afterwards."""
    result = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {dotted}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"optim.image_lr": 0.0005, ...}; lists stay values (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def effective_settings(config: TrainConfig) -> dict[str, Any]:
    """The flat settings that act on training: without cross-attention, `cross_attention.enabled: false` alone
    (scales, heads, start loop of a module that is off would read as choices). config.yaml keeps every key."""
    flat = flatten(config.to_dict())
    if config.cross_attention.enabled:
        return flat
    return {key: value for key, value in flat.items()
            if not key.startswith("cross_attention.") or key == "cross_attention.enabled"}



MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a param value


def param_text(value: Any) -> str:
    """A value as an MLflow param: strings as they are, anything else as JSON (lists, null, booleans)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MLFLOW_PARAM_CHARS]


def mlflow_params(config: TrainConfig) -> dict[str, str]:
    """The config as MLflow params, one per dotted key: the same for a study's trial and a retrain, so their
    runs compare key by key."""
    return {key: param_text(value) for key, value in effective_settings(config).items()}



def resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths (dataset roots, base adapters, weights files) made absolute against `base`.

    A study resolves them in the driver's working directory: Ray runs each trial in its own folder, where a
    relative `data/visa` would point nowhere. A pretrained *tag* (no slash, no suffix) is left alone.
    """
    flat = flatten(data)
    resolved = {}
    for key, marker in path_fields().items():
        value = flat.get(key)
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            continue
        if marker.or_tag and "/" not in value and not Path(value).suffix:
            continue
        resolved[key] = str((base / value).resolve())
    return apply_overrides(data, resolved) if resolved else data


def config_keys() -> set[str]:
    """Every dotted leaf key of TrainConfig, for validating a study's search space up front."""
    keys = set()
    for key, field, section in _schema_fields(TrainConfig):
        # a section is no key, except an optional one, which can be set to null as a whole
        if section is None or type(None) in getattr(field.annotation, "__args__", ()):
            keys.add(key)
    return keys


def path_fields() -> dict[str, PathField]:
    """Dotted key -> marker of every TrainConfig field marked as a path (see PathField)."""
    return {key: marker for key, field, _ in _schema_fields(TrainConfig)
            for marker in field.metadata if isinstance(marker, PathField)}


def _schema_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo, type | None]]:
    """(dotted key, field, nested section model or None) of every field, sections' fields included."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                  and issubclass(a, BaseModel)]
        yield f"{prefix}{name}", field, (nested[0] if nested else None)
        if nested:
            yield from _schema_fields(nested[0], f"{prefix}{name}.")
