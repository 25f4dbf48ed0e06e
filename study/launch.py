"""Launch and resume a study: Ray, the tracking server, the parent run, and the Tuner (DESIGN §5-§6).

Order matters: everything that can refuse a study (the spec, the Ray and Optuna storages, an existing study of the
same name, a cluster without the requested GPUs, an unreachable tracking server) is checked before the
experiment, the parent run or the Optuna study is written, so a refused study leaves nothing half-made behind;
a launch that fails anyway before its first trial marks its parent run FAILED and frees the name.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import ray
import yaml
from ray import tune

from aaclip.home import aaclip_home
from study.cluster import check_cluster, connect_ray, warn_if_unreachable
from study.confirm import confirm_study
from study.driver import run_phase, study_session
from study.errors import StudyError
from study.preflight import check_launch_targets, preflight_data
from study.record import (
    BASE_ARTIFACT, SPEC_ARTIFACT, Tag, find_parent_run, parent_tags, require_parent_run, study_from_parent,
)
from study.server import resolve_tracking_uri
from study.spec import Study
from study.spool import replay_all, spool_root
from study.storage import (
    experiment_folder_exists, optuna_storage, optuna_storage_url, remove_tuner_state, storage_root, without_password,
)
from study.tracking import (
    create_parent_run, ensure_experiment, save_study_view, study_link, tracking_client,
)
from study.trainable import TrialContext
from study.tuner import make_trainable, make_tuner, restore_scheduler

Echo = Callable[..., None]


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
        folder_existed = experiment_folder_exists(experiment_path)
        parent_run_id = _create_parent(client, study, experiment_id, experiment_path)
        try:
            context = TrialContext.from_driver(study, uri, experiment_id, parent_run_id, aaclip_home())
            tuner = make_tuner(study, context, root)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the launch's own error is the one to show
                _abandon_launch(client, parent_run_id, study, experiment_path, folder_existed)
            raise
        echo(f"study {study.name}: MLflow runs at {printed_link(client, uri, experiment_id, study)}")
        echo(f"  searcher: optuna-dashboard {optuna_storage_url(study)}")
        return _run_phases(tuner, study, context, experiment_path, echo)
    finally:
        if started:
            ray.shutdown()


def _abandon_launch(client, parent_run_id: str, study: Study, experiment_path: str, folder_existed: bool) -> None:
    """A launch that failed before its first trial: the parent run is marked FAILED and moved to MLflow's
    trash, the Optuna study is deleted and what the Tuner wrote to Ray's storage (a local folder or a bucket) is
    removed, so the name is free for the next launch."""
    with contextlib.suppress(OSError):  # a Tuner not yet built wrote nothing
        remove_tuner_state(experiment_path, folder_existed)
    client.set_tag(parent_run_id, Tag.LAUNCH, "failed")
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
    tags = parent_tags(study, experiment_path, without_password(optuna_storage_url(study)))
    params = {"objective": spec.objective.metric, "mode": spec.objective.mode, "base": spec.base,
              "searcher": spec.searcher.kind, "sampler": spec.searcher.sampler, "seed": spec.searcher.seed,
              "scheduler": spec.scheduler.kind, "num_samples": study.num_samples(), "baseline": spec.baseline,
              "max_concurrent": spec.trials.max_concurrent, **{f"space.{line.split(':')[0]}": line.split(": ", 1)[1]
                                                                  for line in study.space.describe()}}
    run_id = create_parent_run(client, experiment_id, study.name, tags, params)
    save_study_view(client, experiment_id, study.name, spec.objective.metric, spec.objective.mode,
                    list(spec.space))
    client.log_text(run_id, study.to_yaml(), SPEC_ARTIFACT)
    client.log_text(run_id, yaml.safe_dump(study.base_data, sort_keys=False), BASE_ARTIFACT)
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

def resume_study(name: str, *, address: str | None = None, tracking_uri: str | None = None,
                 echo: Echo = print) -> StudyRun:
    uri = resolve_tracking_uri(tracking_uri, echo=echo)
    client = tracking_client(uri)
    parent = require_parent_run(client, name)
    study = study_from_parent(client, parent)
    experiment_path = parent.data.tags[Tag.STORAGE_PATH]
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
        restore_scheduler(tuner, study, client, parent, echo)
        return _run_phases(tuner, study, context, experiment_path, echo)
    finally:
        if started:
            ray.shutdown()
