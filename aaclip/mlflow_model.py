"""The registry's model flavour: trained adapters (safetensors) and their TrainConfig as an MLflow pyfunc model.

A model version holds the trainable part only; the frozen CLIP is rebuilt from the config's model section (its
pretrained tag or weights file; the tiny test backbone's seeded random init), so a version is the adapters' size.

    from aaclip.mlflow_model import load_registered
    model = load_registered("models:/aaclip-feedback/1", tracking_uri="http://127.0.0.1:5000")  # an AdaptedCLIP

In MLflow's own terms the same version is `mlflow.pyfunc.load_model(uri)`: `.predict(images, params={"class_name":
"bottle"})` gives anomaly maps and image scores, `.unwrap_python_model().model` is the AdaptedCLIP.

Both `aaclip-study export --register` (a trial's best adapters, under the trial's run) and `aaclip train --register`
(a retrain's final adapters, under the retrain's run) register through `register_adapters`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

from aaclip.mlflow_env import apply_client_settings

apply_client_settings()  # before mlflow is imported (aaclip/mlflow_env.py says why)

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import LoggedModelOutput, LoggedModelStatus  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import Model, ModelSignature  # noqa: E402
from mlflow.pyfunc import PythonModel  # noqa: E402
from mlflow.store.artifact.utils.models import get_model_name_and_version  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec  # noqa: E402

from aaclip.checkpoint import load_trainable, read_safetensors, write_safetensors  # noqa: E402
from aaclip.config import TrainConfig, load_config  # noqa: E402
from aaclip.evaluate import batch_predictions, class_text  # noqa: E402
from aaclip.model import AdaptedCLIP  # noqa: E402
from aaclip.factory import build_model, resolve_device  # noqa: E402
from aaclip.prompt_tokens import PromptTokenizer  # noqa: E402

ADAPTERS, CONFIG = "adapters", "config"  # the model's artifact keys
MODEL_NAME = "aaclip"  # the logged model's name within its run
DEFAULT_CLASS = "object"  # the prompts' class name when predict is given none
# provenance key (written by `aaclip-study export`) -> the tag that carries it on a retrain run and a model version
SOURCE_TAGS = {"study": "aaclip.source_study", "trial": "aaclip.source_trial", "trial_id": "aaclip.source_trial_id",
               "mlflow_run_id": "aaclip.source_run_id"}


def describe_trial(provenance: dict[str, Any]) -> str:
    """`trial T of study S (metric = value)`, for descriptions a person reads."""
    value = provenance.get("value")
    shown = f"{value:.4g}" if isinstance(value, float) else value
    return f"trial {provenance['trial']} of study {provenance['study']} ({provenance.get('metric')} = {shown})"


def source_tags(provenance: dict[str, Any] | None) -> dict[str, str]:
    """Tags that point back to the exported trial (none for a config that was not exported)."""
    return {tag: str(provenance[key]) for key, tag in SOURCE_TAGS.items()
            if provenance and provenance.get(key) is not None}


class AdaptedClipModel(PythonModel):
    """Loads to `.model` (AdaptedCLIP, adapters loaded, eval mode) and `.config` (its TrainConfig).

    `model_config={"device": "cpu"}` at load time overrides the config's model.device (a GPU-trained model on a
    machine without one).
    """

    # The input is a float32 image tensor that the explicit signature describes; MLflow's type-hint validation
    # (which wraps predict and warns at class creation when it finds no hints) covers no tensor type.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.config = load_config(context.artifacts[CONFIG])
        device = (context.model_config or {}).get("device")
        self.model = build_adapted(self.config, read_safetensors(Path(context.artifacts[ADAPTERS])),
                                   context.artifacts[ADAPTERS], device)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """images [B,3,S,S] normalised as aaclip's transforms do -> {"anomaly_map": [B,S,S], "image_score": [B]}
        (the raw detection score; evaluation mixes in the map's maximum per class)."""
        class_name = (params or {}).get("class_name") or DEFAULT_CLASS
        return predict_anomalies(self.model, self.config, np.asarray(model_input), class_name)


def build_adapted(config: TrainConfig, adapters: dict[str, torch.Tensor], source: str,
                  device: str | None = None) -> AdaptedCLIP:
    model = build_model(config, resolve_device(device or config.model.device))
    load_trainable(model, adapters, source)
    return model.eval()


@torch.no_grad()
def predict_anomalies(model: AdaptedCLIP, config: TrainConfig, images: np.ndarray,
                      class_name: str) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    pixels = torch.as_tensor(images, dtype=torch.float32, device=device)
    anchors, contexts = class_text(model, tokenizer(config.model.name), [class_name], config, device)
    rows = torch.zeros(len(pixels), dtype=torch.long, device=device)
    context = None if contexts is None else contexts[rows]
    maps, scores = batch_predictions(model, pixels, anchors[rows], config, context, contextlib.nullcontext)
    return {"anomaly_map": maps.numpy(), "image_score": scores.numpy()}


@functools.lru_cache(maxsize=4)
def tokenizer(model_name: str) -> PromptTokenizer:
    return PromptTokenizer(model_name)  # read once per backbone, not on every predict call


def signature(config: TrainConfig) -> ModelSignature:
    size = config.model.image_size
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
                          params=ParamSchema([ParamSpec("class_name", "string", DEFAULT_CLASS)]))


def requirements() -> list[str]:
    try:
        return [f"aaclip-study=={version('aaclip-study')}"]
    except PackageNotFoundError:
        return ["aaclip-study"]


def register_adapters(client: MlflowClient, run_id: str, name: str, adapters: dict[str, torch.Tensor],
                      config_file: Path, *, description: str, tags: dict[str, str]):
    """Log the adapters and config (a TrainConfig YAML; a provenance section is kept) as a model of run
    `run_id`, and register it as a new version of `name` (created when new). The version's run is `run_id`; its
    description and tags say where it comes from.

    Step by step rather than mlflow.pyfunc.log_model, which logs into the active fluent run (reopening a
    finished trial's run would change its status) and files a model of an explicit run under the default
    experiment instead of the run's.
    """
    with quiet_registration():
        return _register(client, run_id, name, adapters, config_file, description=description, tags=tags)


@contextlib.contextmanager
def quiet_registration() -> Iterator[None]:
    """Keep MLflow's notes on registering out of the terminal: that no input example was given (the signature is
    explicit, and an example would have to load CLIP to be checked), that the model class is pickled (it is this
    package's own, pickled by reference), and that it waits for the version to be ready."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _register(client: MlflowClient, run_id: str, name: str, adapters: dict[str, torch.Tensor], config_file: Path,
              *, description: str, tags: dict[str, str]):
    run = client.get_run(run_id)
    config = load_config(config_file)  # refuses a config that would not load back
    logged = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        tags=tags)
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder)
        shutil.copyfile(config_file, files / "config.yaml")
        artifacts = {ADAPTERS: str(write_safetensors(adapters, files / "adapters.safetensors")),
                     CONFIG: str(files / "config.yaml")}
        mlflow.pyfunc.save_model(
            files / "model", python_model=AdaptedClipModel(), artifacts=artifacts, signature=signature(config),
            pip_requirements=requirements(),
            mlflow_model=Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id))
        client.log_model_artifacts(logged.model_id, str(files / "model"))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    ensure_registered_model(client, name)
    return client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags,
                                       description=description, model_id=logged.model_id)


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="AA-CLIP adapters (aaclip.mlflow_model)")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def load_registered(uri: str, tracking_uri: str | None = None, device: str | None = None) -> AdaptedCLIP:
    """A registered (or logged) aaclip model as an AdaptedCLIP with its adapters loaded, in eval mode.

    `uri`: models:/NAME/VERSION, models:/NAME@ALIAS, a runs:/ or local model path; `tracking_uri` defaults to
    MLflow's own (MLFLOW_TRACKING_URI).
    """
    return load_pyfunc(uri, tracking_uri, device).unwrap_python_model().model


def load_pyfunc(uri: str, tracking_uri: str | None = None, device: str | None = None):
    """The pyfunc model at `uri`. A models:/ URI is resolved here with a client of `tracking_uri`: MLflow's own
    models:/ resolution reads only the process-wide registry URI."""
    if uri.startswith("models:/"):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        found = get_model_name_and_version(client, uri)
        uri = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
               else client.get_model_version_download_uri(*found))
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)
        return mlflow.pyfunc.load_model(local, model_config={"device": device} if device else None)
