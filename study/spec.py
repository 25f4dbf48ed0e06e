"""A study spec (search_spaces/*.yaml, DESIGN §5): parsed, checked and resolved before anything starts.

Every mistake a user can make in a spec is found here, with one line naming the file and the key, so a bad spec
never starts Ray, MLflow or a trial: unknown keys, dotted keys that are not TrainConfig keys, empty or inverted
ranges, log ranges touching 0, objectives the trainer never reports, validation data equal to test data.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from aaclip.architecture import check_config_fits
from aaclip.config import (
    Strict, TrainConfig, apply_overrides, config_keys, format_validation_error, read_yaml, resolve_config_path,
    resolve_relative_paths, validate_config,
)
from aaclip.errors import AaclipError
from aaclip.metric_names import REPORTED_METRICS, evaluation
from aaclip.schedule import feedback_plan
from study.errors import StudyError
from study.space import BUDGET_KEYS, Parameter, SearchSpace

SPEC_DIR = Path(__file__).resolve().parent.parent / "search_spaces"  # a source checkout (editable install)
DEFAULT_NUM_SAMPLES = 10
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Objective(Strict):
    metric: str = evaluation("pixel_auroc")
    mode: Literal["max", "min"] = "max"


class SearcherSpec(Strict):
    # optuna: TPE (the default) or another Optuna sampler; random: uniform draws; grid: every point of a grid
    # space once. All three run through Ray's OptunaSearch so the Optuna study is persisted for the dashboard.
    kind: Literal["optuna", "random", "grid"] = "optuna"
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    storage: str | None = None  # Optuna RDB URL; default sqlite under $AACLIP_HOME/optuna/


class SchedulerSpec(Strict):
    kind: Literal["asha", "none"] = "asha"
    time_attr: Literal["loop", "epoch"] = "loop"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)  # default: the largest loop/epoch count the space allows


class GuardSpec(Strict):
    enabled: bool = True
    nonfinite_loss: bool = True  # stop a trial whose loss is NaN or infinite
    image_adapter_share_floor: float | None = Field(0.05, ge=0.0, lt=1.0)  # null: no starvation check
    patience: int = Field(3, ge=1)  # consecutive stage-2 epochs below the floor before stopping


class Resources(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class TrialsSpec(Strict):
    # Searched trials (the baseline comes on top). null: every point of a grid once, else 10 draws.
    num_samples: int | None = Field(None, ge=1)
    max_concurrent: int = Field(2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0)


class ConfirmSpec(Strict):
    # After the search: the top_k completed configurations rerun on `seeds` fresh seeds (never used by the
    # search), each beside its matched twin (cross-attention off, all else equal) and the base model on the same
    # seeds. top_k 0 turns the phase off. A 95% t-interval needs at least 2 seeds.
    top_k: int = Field(0, ge=0)
    seeds: int = Field(3, ge=2)


class TrackingSpec(Strict):
    uri: str | None = None  # null -> $MLFLOW_TRACKING_URI, else the embedded local server
    experiment: str | None = None  # null -> the study name
    # Seconds between samples of each trial's system/* metrics (CPU, memory, GPU: study/system_metrics.py);
    # null: none.
    system_metrics_s: float | None = Field(10.0, gt=0.0)


class StudySpec(Strict):
    name: str
    description: str = ""
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    space: dict[str, Parameter] = Field(default_factory=dict)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    guard: GuardSpec = Field(default_factory=GuardSpec)
    baseline: bool = True
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)  # off unless a spec asks (the shipped ones do)
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    storage: str | None = None  # Ray results: local dir, NFS path or s3://; null -> $AACLIP_HOME/ray_results
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)


@dataclass
class Study:
    """A checked spec with its resolved base configuration and search space."""

    spec: StudySpec
    source: str  # the file it came from, for messages and provenance
    base_data: dict[str, Any]  # base config + overrides, before validation defaults (what trials override)
    base_config: TrainConfig  # base_data validated

    @cached_property
    def space(self) -> SearchSpace:
        return SearchSpace(self.spec.space)

    @property
    def name(self) -> str:
        return self.spec.name

    def trial_config(self, point: dict[str, Any]) -> TrainConfig:
        """The TrainConfig of one sampled point (dotted keys over the base)."""
        data = apply_overrides(self.base_data, point, source=self.source)
        return validate_config(data, source=f"{self.source}: trial {_describe(point)}")

    def baseline_config(self) -> TrainConfig:
        """The base model (cross-attention off) under the largest budget any trial can get."""
        point = {**self.space.budget_upper_bounds(), "cross_attention.enabled": False}
        return self.trial_config(point)

    def num_samples(self) -> int:
        """Searched trials (the baseline comes on top)."""
        wanted = self.spec.trials.num_samples
        if self.spec.searcher.kind == "grid":
            points = len(self.space.grid_points())
            return min(wanted, points) if wanted else points
        return wanted or DEFAULT_NUM_SAMPLES

    def max_time(self) -> int:
        """The largest ASHA time a trial can reach (loops, or global epochs)."""
        if self.spec.scheduler.max_t:
            return self.spec.scheduler.max_t
        configs = [self.trial_config(self.space.budget_upper_bounds())]
        loops = max(config.feedback.loops for config in configs)
        if self.spec.scheduler.time_attr == "loop":
            return loops
        return max(planned_epochs(config) for config in configs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False)


def planned_epochs(config: TrainConfig) -> int:
    """Global epochs of a full run (both stages, every loop)."""
    return sum(stage.epochs for stage in feedback_plan(config.feedback))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped spec (`smoke`, `feedback-scale`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    # An installed package (the docker image) has no SPEC_DIR; search_spaces/ in the working directory serves.
    folders = [SPEC_DIR, Path.cwd() / "search_spaces"]
    for folder in folders:
        shipped = folder / f"{name_or_path}.yaml"
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted({p.stem for folder in folders for p in folder.glob("*.yaml")}))
    raise StudyError(f"{name_or_path}: no such study spec file or shipped spec (shipped: {names})")


def load_study(name_or_path: str | Path, *, name: str | None = None, num_samples: int | None = None,
               smoke_test: bool = False, confirm_top_k: int | None = None) -> Study:
    path = resolve_spec_path(name_or_path)
    try:
        data = read_yaml(path)
    except AaclipError as error:
        raise StudyError(str(error)) from None
    if smoke_test:
        data = smoke_sized(data)
    if name:
        data["name"] = name
    if num_samples:
        data.setdefault("trials", {})["num_samples"] = num_samples
    if confirm_top_k is not None:
        data["confirm"] = {**(data.get("confirm") or {}), "top_k": confirm_top_k}
    return parse_study(data, source=str(path), base_dir=path.parent)


def smoke_sized(data: dict[str, Any]) -> dict[str, Any]:
    """--smoke-test: the same study in miniature (2 trials, 1 loop of 1 epoch per stage; a confirmation, if the
    spec has one, of the best configuration on 2 seeds), to check the wiring."""
    data = {**data, "name": f"{data.get('name', 'study')}-smoke"}
    trials = dict(data.get("trials") or {})
    trials["num_samples"] = 2
    data["trials"] = trials
    confirm = data.get("confirm")
    if isinstance(confirm, dict) and confirm.get("top_k"):
        data["confirm"] = {**confirm, "top_k": 1, "seeds": 2}
    data["overrides"] = {**(data.get("overrides") or {}), "feedback.loops": 1, "feedback.text_epochs": 1,
                         "feedback.image_epochs": 1}
    space = data.get("space") if isinstance(data.get("space"), dict) else {}
    data["space"] = {key: value for key, value in space.items() if key not in BUDGET_KEYS}
    return data


def parse_study(data: dict[str, Any], source: str = "spec", base_dir: Path | None = None) -> Study:
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as error:
        raise StudyError(format_validation_error(error, source)) from None
    base_data = _base_data(spec, source, base_dir)
    check_name(spec.name, source)
    study = Study(spec=spec, source=source, base_data=base_data, base_config=_validate_base(base_data, source))
    check_study(study)
    return study


def _validate_base(base_data: dict[str, Any], source: str) -> TrainConfig:
    """The base configuration, checked as a trial's would be (including data.val != data.test)."""
    try:
        return validate_config(base_data, source=f"{source}: base")
    except AaclipError as error:
        raise StudyError(str(error)) from None


def _base_data(spec: StudySpec, source: str, base_dir: Path | None) -> dict[str, Any]:
    base = spec.base
    if base_dir is not None and (base_dir / base).is_file():  # a config next to the spec
        base = str(base_dir / base)
    try:
        data = read_yaml(resolve_config_path(base))
    except AaclipError as error:
        raise StudyError(f"{source}: base: {error}") from None
    data.pop("provenance", None)
    _check_dotted_keys(spec.overrides, f"{source}: overrides")
    data = apply_overrides(data, spec.overrides, source=f"{source}: overrides")
    return resolve_relative_paths(data, Path.cwd())


# ---------------------------------------------------------------------------------------------------------------
# Checks that need more than the schema


def check_name(name: str, source: str) -> None:
    if not NAME_PATTERN.match(name):
        raise StudyError(f"{source}: name: {name!r} must be letters, digits, '.', '_' or '-' (max 100)")


def check_study(study: Study) -> None:
    """What a parsed study must hold beyond its schema, name and base configuration."""
    spec, source = study.spec, study.source
    _check_dotted_keys(dict.fromkeys(spec.space), f"{source}: space")
    for key, parameter in spec.space.items():
        _check_dotted_keys(dict.fromkeys(parameter.also), f"{source}: space.{key}.also")
    study.space.check(source)
    _check_searcher(study)
    _check_device(study)
    check_objective(spec.objective.metric, study.base_config, source)
    _check_points(study)


def _check_dotted_keys(keys: dict[str, Any], where: str) -> None:
    known = config_keys()
    sections = {key.rsplit(".", i)[0] for key in known for i in range(1, key.count(".") + 1)}
    for key in keys:
        if key not in known and key not in sections:
            hint = _closest(key, known)
            raise StudyError(f"{where}.{key}: not a TrainConfig key{hint}")


def _closest(key: str, known: set[str]) -> str:
    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def _check_searcher(study: Study) -> None:
    spec, source = study.spec, study.source
    grids = [key for key, parameter in spec.space.items() if parameter.grid is not None]
    if spec.searcher.kind == "grid":
        others = [key for key, parameter in spec.space.items() if parameter.grid is None]
        if others:
            raise StudyError(f"{source}: space.{others[0]}: a grid searcher needs grid values for every key")
        if not spec.space:
            raise StudyError(f"{source}: space: a grid searcher needs at least one grid key")
    elif grids:
        raise StudyError(f"{source}: space.{grids[0]}: grid values need `searcher: {{kind: grid}}`")


def _check_device(study: Study) -> None:
    """A trial runs where Ray put it: GPUs for a CPU-pinned model, or a CUDA model without GPUs, is a mistake."""
    device, gpus = study.base_config.model.device, study.spec.trials.resources.gpu
    if gpus > 0 and device == "cpu":
        raise StudyError(f"{study.source}: trials.resources.gpu: {gpus} GPU per trial, but model.device is cpu "
                         "(set overrides: {model.device: auto})")
    if gpus == 0 and device.startswith("cuda"):
        raise StudyError(f"{study.source}: trials.resources.gpu: 0, but model.device is {device}; give trials a "
                         "GPU or set model.device: auto")


def _check_points(study: Study) -> None:
    """Every point a sampler can reach (and the baseline) must make a trial that can run and report the
    objective: a valid TrainConfig that fits the backbone (checked from its architecture JSON, not built)."""
    checks = [(point, f"trial {_describe(point)}") for point in study.space.extreme_points() or [{}]]
    if study.spec.baseline:
        checks.append((None, "baseline"))
    for point, where in checks:
        try:
            config = study.baseline_config() if point is None else study.trial_config(point)
            check_config_fits(config, source=f"{study.source}: {where}")
        except AaclipError as error:
            raise StudyError(f"baseline: {error}" if point is None else str(error)) from None
        check_objective(study.spec.objective.metric, config, f"{study.source}: {where}")


def check_objective(metric: str, config: TrainConfig, source: str) -> None:
    known = REPORTED_METRICS
    parts = metric.split("/")
    if parts[-1] == "pixel_aupro" and not config.eval.aupro:
        raise StudyError(f"{source}: objective.metric: {metric} is reported only with eval.aupro: true, but this "
                         "config has eval.aupro: false")
    if metric in known:
        return
    if len(parts) == 3 and parts[0] == "val" and evaluation(parts[2]) in known:
        classes = config.data.val.categories
        if classes is None or parts[1] in classes:
            return
        raise StudyError(f"{source}: objective.metric: class {parts[1]!r} is not in data.val.categories {classes}")
    val_metrics = ", ".join(sorted(m for m in known if m.startswith("val/")))
    raise StudyError(f"{source}: objective.metric: {metric!r} is never reported by the trainer "
                     f"(use one of {val_metrics}, or val/<class>/<metric>)")


def _describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in point.items()) or "base"
