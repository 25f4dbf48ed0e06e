"""Launch and resume a study: Ray, the tracking server, the parent run, and the Tuner (DESIGN §5-§6).

Order matters: everything that can refuse a study (the spec, the Ray and Optuna storages, an existing study of the
same name, a cluster without the requested GPUs, an unreachable tracking server) is checked before the
experiment, the parent run or the Optuna study is written, so a refused study leaves nothing half-made behind;
a launch that fails anyway before its first trial marks its parent run FAILED and frees the name.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
import yaml
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from aaclip.home import aaclip_home
from study.asha_state import reported_history, restore_rungs
from study.confirm import confirm_study
from study.devices import check_cuda_where_gpus_go
from study.errors import StudyError
from study.guard import GradientGuard
from study.driver import run_phase, study_session
from study.locks import file_lock
from study.preflight import check_launch_targets
from study.searcher import INDEX_KEY, BaselineFirst, StudyOptunaSearch, is_baseline
from study.server import resolve_tracking_uri
from study.spec import Study, parse_study
from study.spool import replay_all, spool_root
from study.tracking import (
    create_parent_run, ensure_experiment, find_parent_run, recorded_outcomes, require_parent_run,
    save_study_view, study_link, tracking_client,
)
from study.trainable import FORWARDED_ENV, TRACKING_SECRETS, TrialContext, run_trial

Echo = Callable[..., None]
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what matters


@dataclass
class StudyRun:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    experiment_path: str
    trials: int
    errors: int


# ---------------------------------------------------------------------------------------------------------------
# Where things go


def storage_root(storage: str | None) -> str:
    """Ray results: the given local path or URI, else $AACLIP_HOME/ray_results (never ~/ray_results)."""
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve() if storage else aaclip_home() / "ray_results")


OPTUNA_STORAGE_VARIABLE = "AACLIP_OPTUNA_STORAGE"  # keeps a database password out of the spec (docker/)


def optuna_storage_url(study: Study) -> str:
    if study.spec.searcher.storage or os.environ.get(OPTUNA_STORAGE_VARIABLE):
        return study.spec.searcher.storage or os.environ[OPTUNA_STORAGE_VARIABLE]
    # optuna-dashboard sqlite:///... shows the running study. The folder is made when the storage is opened.
    return f"sqlite:///{aaclip_home() / 'optuna' / 'optuna.db'}"


def without_password(url: str) -> str:
    """What the parent run may show of a storage URL: tags are readable by anyone with access to the run."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    # Two studies started at once on one home would both create a new database's tables (and one fails).
    from sqlalchemy.engine import make_url

    database = Path(make_url(url).database)
    database.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(database.with_suffix(".lock")):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


# ---------------------------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None) -> bool:
    """Connect to RAY_ADDRESS / --address, or start a local Ray; True if this call started the connection."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ and name not in TRACKING_SECRETS}
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                               "logging_level": "WARNING"}
    if not address:
        # A local cluster needs no token; with token auth on, Ray would also write ~/.ray/auth_token (DESIGN §8).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        options["include_dashboard"] = False
        # "local": a fresh Ray of our own; without it ray.init() joins whatever cluster this machine last
        # started (/tmp/ray/ray_current_cluster), which is not what "no --address" promises.
        address = "local"
    ray.init(address=address, **options)
    return True


def preflight_data(study: Study) -> None:
    """Local runs: read (or generate, for synthetic data) the base's datasets once, in the driver.

    A missing dataset is then one line before any trial starts, not the same traceback from every trial, and
    concurrent trials never race to generate the same synthetic dataset. Skipped for a remote cluster, whose
    data paths need not exist on the driver's machine.
    """
    from aaclip.data.checks import load_checked_records
    from aaclip.data.records import class_names

    # val and test disjoint, every image decodes
    validation_classes = class_names(load_checked_records(study.base_config, source=study.source)["val"])
    parts = study.spec.objective.metric.split("/")
    if len(parts) == 3 and parts[1] not in validation_classes:
        raise StudyError(f"{study.source}: objective.metric: the validation data has no class {parts[1]!r} "
                         f"(classes: {', '.join(validation_classes)})")


def warn_if_unreachable(uri: str, echo: Echo) -> None:
    """A loopback tracking server is invisible to trials on other machines of a real cluster."""
    host = uri.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    nodes = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    if host in ("127.0.0.1", "localhost") and len(nodes) > 1:
        echo(f"note: the tracking server {uri} listens on loopback, but the Ray cluster spans {len(nodes)} hosts; "
             "trials elsewhere cannot log to it: pass --tracking-uri http://<a reachable host>:<port>")


def check_cluster(study: Study) -> None:
    resources = study.spec.trials.resources
    cluster = ray.cluster_resources()
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if resources.gpu > 0 and gpus == 0:
        raise StudyError(f"{study.source}: trials.resources.gpu: {resources.gpu} GPU per trial requested, but the "
                         "Ray cluster has no GPU (set it to 0, or connect to a GPU cluster with --address)")
    if resources.gpu > gpus:
        raise StudyError(f"{study.source}: trials.resources.gpu: {resources.gpu} GPUs per trial, but the cluster "
                         f"has {gpus:g}")
    if resources.cpu > cpus:
        raise StudyError(f"{study.source}: trials.resources.cpu: {resources.cpu:g} CPUs per trial, but the cluster "
                         f"has {cpus:g}")
    check_cuda_where_gpus_go(resources.gpu, study.source)


# ---------------------------------------------------------------------------------------------------------------
# Tuner parts


class StudyASHA(AsyncHyperBandScheduler):
    """ASHA that records the baseline's results (a fair reference for the rungs) but never stops it.

    `ended`: trials whose end is on record already (a resumed study, whose Ray state was saved before it);
    Ray runs them again, and they are stopped at their first result so the recorded decision stands.
    """

    ended: frozenset[str] = frozenset()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.ended:
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if is_baseline(trial.config) else decision


def make_scheduler(study: Study) -> TrialScheduler:
    spec = study.spec.scheduler
    if spec.kind == "none":
        return FIFOScheduler()
    max_t = max(study.max_time(), spec.grace_period)
    # stop_last_trials=False: a trial that reaches max_t has finished its own schedule; stopping it there would
    # only race its last report.
    return StudyASHA(time_attr=spec.time_attr, metric=study.spec.objective.metric,
                     mode=study.spec.objective.mode, max_t=max_t, grace_period=spec.grace_period,
                     reduction_factor=spec.reduction_factor, stop_last_trials=False)


class TrialNamer:
    """Short trial names, distinct at the front where MLflow's runs table cuts them: t001, t002, ... in sampling
    order, and baseline. The study's name is the parent run's and every run's aaclip.study tag, not repeated."""

    def __call__(self, trial) -> str:
        if is_baseline(trial.config):
            return "baseline"
        index = trial.config.get(INDEX_KEY)
        return f"t{index:03d}" if isinstance(index, int) else f"trial-{trial.trial_id}"


def make_trainable(study: Study, context: TrialContext):
    resources = study.spec.trials.resources
    return tune.with_resources(tune.with_parameters(run_trial, context=context),
                               {"cpu": resources.cpu, "gpu": resources.gpu})


def make_tuner(study: Study, context: TrialContext, storage: str) -> tune.Tuner:
    spec = study.spec
    search = StudyOptunaSearch(study, storage=optuna_storage(optuna_storage_url(study)),
                               time_attr=spec.scheduler.time_attr)
    searcher = ConcurrencyLimiter(BaselineFirst(search, enabled=spec.baseline), max_concurrent=spec.trials.max_concurrent)
    guard = GradientGuard(spec.guard)
    namer = TrialNamer()
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(study),
                                  num_samples=study.num_samples() + int(spec.baseline),
                                  trial_name_creator=namer, trial_dirname_creator=namer)
    run_config = tune.RunConfig(
        name=study.name, storage_path=storage, stop=guard, verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.trials.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # driver callbacks: study/driver.py
    )
    return tune.Tuner(make_trainable(study, context), tune_config=tune_config, run_config=run_config)


# ---------------------------------------------------------------------------------------------------------------
# Run and resume


def run_study(study: Study, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, echo: Echo = print) -> StudyRun:
    root = storage_root(storage or study.spec.storage)
    experiment_path = f"{root}/{study.name}"
    check_launch_targets(root, optuna_storage_url(study), study.source)
    if tune.Tuner.can_restore(experiment_path):
        raise StudyError(f"study {study.name!r} already exists in {experiment_path}: continue it with "
                         f"`aaclip-study resume {study.name}`, or start a new one with --name")
    remote = bool(address) or os.environ.get("RAY_ADDRESS", "local") not in ("", "local")
    if not remote:
        preflight_data(study)
    uri = resolve_tracking_uri(tracking_uri, study.spec.tracking.uri, echo=echo)
    client = tracking_client(uri)
    started = connect_ray(address)
    try:
        check_cluster(study)
        warn_if_unreachable(uri, echo)
        if find_parent_run(client, study.name) is not None:
            raise StudyError(f"study {study.name!r} already exists on {uri}: continue it with "
                             f"`aaclip-study resume {study.name}`, or start a new one with --name")
        _refuse_existing_optuna_study(study)
        experiment_id = ensure_experiment(client, study.spec.tracking.experiment or study.name)
        folder_existed = "://" in experiment_path or Path(experiment_path).exists()
        parent_run_id = _create_parent(client, study, experiment_id, experiment_path)
        try:
            context = TrialContext.from_driver(study, uri, experiment_id, parent_run_id, aaclip_home())
            tuner = make_tuner(study, context, root)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the launch's own error is the one to show
                _abandon_launch(client, parent_run_id, study, None if folder_existed else Path(experiment_path))
            raise
        echo(f"study {study.name}: MLflow runs at {printed_link(client, uri, experiment_id, study)}")
        echo(f"  searcher: optuna-dashboard {optuna_storage_url(study)}")
        return _run_phases(tuner, study, context, experiment_path, echo)
    finally:
        if started:
            ray.shutdown()


def _abandon_launch(client, parent_run_id: str, study: Study, made_folder: Path | None) -> None:
    """A launch that failed before its first trial: the parent run is marked FAILED and moved to MLflow's
    trash, the Optuna study is deleted and the Ray experiment folder this launch made is removed, so the name
    is free for the next launch."""
    if made_folder is not None:
        shutil.rmtree(made_folder, ignore_errors=True)
    client.set_tag(parent_run_id, "aaclip.launch", "failed")
    client.set_terminated(parent_run_id, status="FAILED")
    client.delete_run(parent_run_id)
    url = optuna_storage_url(study)
    if study.name in optuna.get_all_study_names(optuna_storage(url)):
        optuna.delete_study(study_name=study.name, storage=optuna_storage(url))


def _refuse_existing_optuna_study(study: Study) -> None:
    """Optuna would silently continue an old study of the same name and mix its trials into this one."""
    url = optuna_storage_url(study)
    if study.name in optuna.get_all_study_names(optuna_storage(url)):
        raise StudyError(f"an Optuna study named {study.name!r} already exists in {url}: start this one with "
                         "--name, or delete the old one (optuna delete-study)")


def _create_parent(client, study: Study, experiment_id: str, experiment_path: str) -> str:
    spec = study.spec
    tags = {"aaclip.storage_path": experiment_path, "aaclip.optuna_storage": without_password(optuna_storage_url(study)),
            "aaclip.objective": spec.objective.metric, "aaclip.mode": spec.objective.mode,
            "aaclip.time_attr": spec.scheduler.time_attr, "aaclip.spec_source": study.source,
            "aaclip.space_keys": ",".join(spec.space)}
    params = {"objective": spec.objective.metric, "mode": spec.objective.mode, "base": spec.base,
              "searcher": spec.searcher.kind, "sampler": spec.searcher.sampler, "seed": spec.searcher.seed,
              "scheduler": spec.scheduler.kind, "num_samples": study.num_samples(), "baseline": spec.baseline,
              "max_concurrent": spec.trials.max_concurrent, **{f"space.{line.split(':')[0]}": line.split(": ", 1)[1]
                                                                  for line in study.space.describe()}}
    run_id = create_parent_run(client, experiment_id, study.name, tags, params)
    save_study_view(client, experiment_id, study.name, spec.objective.metric, spec.objective.mode,
                    list(spec.space))
    client.log_text(run_id, study.to_yaml(), "study/spec.yaml")
    client.log_text(run_id, yaml.safe_dump(study.base_data, sort_keys=False), "study/base.yaml")
    return run_id


def printed_link(client, uri: str, experiment_id: str, study: Study) -> str:
    """The study's runs in MLflow, best objective first (its saved view: study/tracking.py save_study_view)."""
    return study_link(client, uri, experiment_id, study.name, study.spec.objective.metric,
                      study.spec.objective.mode)


def _run_phases(tuner: tune.Tuner, study: Study, context: TrialContext, experiment_path: str,
                echo: Echo) -> StudyRun:
    """The search, then the confirmation (study/confirm.py), in one session: the parent run ends once, after
    both, and the closing lines are printed once, at the very end."""
    with study_session(study, context) as tracker:
        search = run_phase(tuner, study, context, study.name,
                           total=study.num_samples() + int(study.spec.baseline))
        confirm_trials, confirm_errors = confirm_study(study, context, experiment_path.rsplit("/", 1)[0], tracker,
                                                       echo)
    left = replay_all(tracker.client, Path(context.aaclip_home), study.name)
    if left:
        echo(f"note: the tracking server is away; records of {len(left)} trial(s) stay in "
             f"{spool_root(Path(context.aaclip_home), study.name)} until `aaclip-study resume {study.name}`")
    echo(f"study {study.name}: finished; results in {experiment_path}")
    echo(f"  runs:   {printed_link(tracker.client, context.tracking_uri, context.experiment_id, study)}")
    echo(f"  next:   aaclip-study status {study.name} | aaclip-study export {study.name} -o best.yaml"
         f"{' (the best confirmed mean)' if confirm_trials else ''} | aaclip-study report {study.name}")
    return StudyRun(study.name, context.tracking_uri, context.experiment_id, context.parent_run_id,
                    experiment_path, len(search) + confirm_trials, len(search.errors) + confirm_errors)


def study_from_parent(client, parent) -> Study:
    """The study exactly as launched: its spec and resolved base, as logged to the parent run."""
    with tempfile.TemporaryDirectory() as folder:
        spec_file = client.download_artifacts(parent.info.run_id, "study/spec.yaml", folder)
        base_file = client.download_artifacts(parent.info.run_id, "study/base.yaml", folder)
        data = yaml.safe_load(Path(spec_file).read_text())
        data["base"], data["overrides"] = str(base_file), {}
        study = parse_study(data, source=parent.data.tags.get("aaclip.spec_source", "spec"))
        study.base_config  # noqa: B018 - resolved while the files exist
    return study


def _restore_scheduler(tuner: tune.Tuner, study: Study, client, parent, echo: Echo) -> None:
    """What Ray's saved state lacks (fresh driver callbacks aside: study/driver.py): ASHA's rungs as MLflow
    recorded them, and the trials whose end is on record already (their decisions stand)."""
    internal = tuner._local_tuner  # noqa: SLF001 - Ray offers no public handle on a restored Tuner's parts
    scheduler = internal._tune_config.scheduler  # noqa: SLF001
    if isinstance(scheduler, StudyASHA):
        history = reported_history(client, parent, study.spec.objective.metric, study.spec.scheduler.time_attr)
        points = restore_rungs(scheduler, history)
        scheduler.ended = frozenset(recorded_outcomes(client, parent))
        echo(f"  ASHA: {points} rung result(s) of {len(history)} trial(s) restored; "
             f"{len(scheduler.ended)} trial(s) already ended")


def resume_study(name: str, *, address: str | None = None, tracking_uri: str | None = None,
                 echo: Echo = print) -> StudyRun:
    uri = resolve_tracking_uri(tracking_uri, echo=echo)
    client = tracking_client(uri)
    parent = require_parent_run(client, name)
    study = study_from_parent(client, parent)
    experiment_path = parent.data.tags["aaclip.storage_path"]
    if not tune.Tuner.can_restore(experiment_path):
        raise StudyError(f"study {name!r}: no Ray experiment state in {experiment_path} to resume from")
    started = connect_ray(address)
    try:
        check_cluster(study)
        experiment_id = parent.info.experiment_id
        context = TrialContext.from_driver(study, uri, experiment_id, parent.info.run_id, aaclip_home())
        link = printed_link(client, uri, experiment_id, study)
        echo(f"study {name}: resuming from {experiment_path}; runs at {link}")
        left = replay_all(client, aaclip_home(), name)  # what dead workers and the dead driver left spooled
        if left:
            raise StudyError(f"study {name!r}: the tracking server {uri} does not take the spooled records of "
                             f"{len(left)} trial(s) yet; resume again once it answers")
        tuner = tune.Tuner.restore(experiment_path, trainable=make_trainable(study, context),
                                   resume_unfinished=True, resume_errored=False)
        _restore_scheduler(tuner, study, client, parent, echo)
        return _run_phases(tuner, study, context, experiment_path, echo)
    finally:
        if started:
            ray.shutdown()
