"""`aaclip train --tracking-uri URI [--register MODEL]`: a retrain as an MLflow run that links back to the trial it
repeats, so the lineage study -> trial -> export -> retrain -> registered model can be followed in MLflow.

The run holds the config as params (aaclip.config.mlflow_params: a trial's keys, so the two runs compare key by
key), per-epoch metrics at step = global epoch (a trial's curves), the test metrics with --test, config.yaml and
the exported file. From an exported file (its `provenance`) it is tagged with the study, the trial's name, id and
run id, and its description links the trial's run; it opens in the trial's experiment when that is on the same
server. --register logs the final adapters as a model of this run and registers it (aaclip/mlflow_model.py).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from aaclip.mlflow_env import DESCRIPTION, EXPERIMENT_KIND, apply_client_settings, is_healthy

apply_client_settings()  # before mlflow is imported (aaclip/mlflow_env.py says why)

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from aaclip.checkpoint import load_adapters  # noqa: E402
from aaclip.config import TrainConfig, mlflow_params, read_yaml  # noqa: E402
from aaclip.errors import AaclipError  # noqa: E402
from aaclip.metric_names import LOOP_PREFIX  # noqa: E402
from aaclip.mlflow_model import describe_trial, register_adapters, source_tags  # noqa: E402

ROLE = "aaclip.role"  # "retrain": never taken for a study's trial (those are "trial")
EXPORT_FILE = "aaclip.export_file"
DEFAULT_EXPERIMENT = "aaclip-retrain"


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """A server that does not answer is refused before training, not found out after it."""
    if uri.startswith(("http://", "https://")):
        if is_healthy(uri, timeout_s):
            return
        raise AaclipError(f"tracking server {uri} does not answer {uri.rstrip('/')}/health; start it (e.g. "
                          "`aaclip-study server`), or fix --tracking-uri / MLFLOW_TRACKING_URI")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any store MLflow cannot open is the user's URI
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise AaclipError(f"tracking URI {uri!r}: not usable ({reason})") from None


class RetrainRun:
    """The run of one `aaclip train`, created at the first epoch (a start that fit refuses leaves no run); a
    context manager that ends the run FAILED (KILLED on Ctrl-C) when training fails."""

    def __init__(self, uri: str, config: TrainConfig, config_file: Path, experiment: str | None):
        self.client, self.config, self.config_file = MlflowClient(uri), config, config_file
        self.experiment = experiment
        provenance = read_yaml(config_file).get("provenance")
        self.provenance = provenance if isinstance(provenance, dict) else None
        self.source = _source_run(self.client, self.provenance)
        self.run_id: str | None = None
        self.logging_epochs = True

    def begin(self) -> str:
        if self.run_id is None:
            experiment_id = _experiment_id(self.client, self.experiment, self.source)
            tags = {ROLE: "retrain", **source_tags(self.provenance),
                    DESCRIPTION: describe(self.provenance, self.source, self.client.tracking_uri, self.config_file)}
            if self.provenance:
                tags[EXPORT_FILE] = str(self.config_file.resolve())
            name = f"retrain-{self.provenance['trial']}" if self.provenance else f"train-{self.config_file.stem}"
            run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            params = [Param(key, value) for key, value in mlflow_params(self.config).items()]
            self.client.log_batch(run_id, params=params)  # the client splits it into MLflow's batch limits
            self.client.log_text(run_id, self.config.to_yaml(), "config.yaml")
            if self.provenance:
                self.client.log_artifact(run_id, str(self.config_file), "export")
            self.run_id = run_id
        return self.run_id

    def __enter__(self) -> RetrainRun:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
            except MlflowException:  # the server is gone too: the training's own error is the one to report
                pass

    def epoch_logger(self, progress: Callable[[dict, Path], None]) -> Callable[[dict, Path], None]:
        """fit's on_epoch: the progress line, then the epoch's metrics (a server gone mid-run stops only these)."""

        def on_epoch(metrics: dict, checkpoint: Path) -> None:
            progress(metrics, checkpoint)
            self.log_while_reachable(metrics, int(metrics["epoch"]))

        return on_epoch

    def loop_logger(self, progress: Callable[[dict], None]) -> Callable[[dict], None]:
        """fit's on_loop: the loop record as `loop/<metric>` at step = loop (0: untrained), as a trial logs it."""

        def on_loop(record: dict) -> None:
            progress(record)
            values = {LOOP_PREFIX + key: value for key, value in record.items() if key != "loop"}
            self.log_while_reachable(values, int(record["loop"]))

        return on_loop

    def log_while_reachable(self, metrics: dict[str, Any], step: int) -> None:
        if not self.logging_epochs:
            return
        try:
            self.begin()
            self.log_metrics(metrics, step)
        except MlflowException as error:
            self.logging_epochs = False
            print(f"warning: training metrics no longer reach the tracking server ({error}); "
                  "training goes on", file=sys.stderr)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        values = [Metric(key, float(value), now, step) for key, value in metrics.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(self.run_id, metrics=values)

    def finish(self, out: Path, final_epoch: int, test_metrics: dict[str, float], register: str | None):
        """Test metrics, metrics.json, the registered model (its version, or None); then the run is FINISHED."""
        try:
            self.begin()
            if test_metrics:
                self.log_metrics(test_metrics, final_epoch)
            if (out / "metrics.json").is_file():
                self.client.log_artifact(self.run_id, str(out / "metrics.json"))
            version = self.register(register, out / "checkpoint") if register else None
            self.client.set_terminated(self.run_id, "FINISHED")
        except MlflowException as error:
            raise AaclipError(f"tracking server {self.client.tracking_uri}: {str(error).splitlines()[0][:300]}; "
                              f"the trained model is in {out}") from None
        return version

    def register(self, name: str, checkpoint: Path):
        """The final adapters with the config they trained with (--set included; the export's provenance kept)."""
        source = describe_trial(self.provenance) if self.provenance else str(self.config_file)
        data = self.config.to_dict() | ({"provenance": self.provenance} if self.provenance else {})
        with tempfile.TemporaryDirectory() as folder:
            config_file = Path(folder) / "config.yaml"
            config_file.write_text(yaml.safe_dump(data, sort_keys=False))
            return register_adapters(
                self.client, self.run_id, name, load_adapters(checkpoint), config_file,
                description=f"Retrain of {source}: the final adapters of run {self.run_id} (`aaclip train`).",
                tags={**source_tags(self.provenance), "aaclip.retrain_run_id": self.run_id})


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _source_run(client: MlflowClient, provenance: dict[str, Any] | None):
    """The exported trial's run, when it is on this server (an export may come from another one)."""
    if not provenance or not provenance.get("mlflow_run_id"):
        return None
    try:
        return client.get_run(provenance["mlflow_run_id"])
    except MlflowException:
        return None


def _experiment_id(client: MlflowClient, name: str | None, source) -> str:
    """--experiment, else the trial's experiment, else aaclip-retrain (created like a study's)."""
    if name is None and source is not None:
        return source.info.experiment_id
    name = name or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    if experiment.lifecycle_stage == "deleted":
        raise AaclipError(f"--experiment {name}: this MLflow experiment is deleted; restore it or pick another")
    return experiment.experiment_id


def describe(provenance: dict[str, Any] | None, source, uri: str, config_file: Path) -> str:
    if not provenance:
        return f"`aaclip train {config_file}`"
    trial = describe_trial(provenance)
    if source is not None:
        trial += f", [the trial's run]({run_link(uri, source.info.experiment_id, source.info.run_id)})"
    return (f"Retrain of {trial}, from the exported `{config_file.name}` (selected as: "
            f"{provenance.get('selection', 'unknown')}).")
