"""Where a study's state lives: Ray's results (a local folder or a URI) and the Optuna storage (a database URL).

No Ray here: `report` and the launch's checks read these without a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pyarrow.fs
from sqlalchemy.engine import make_url

from aaclip.home import aaclip_home
from study.locks import file_lock
from study.spec import Study

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what matters


def storage_root(storage: str | None) -> str:
    """Ray results: the given local path or URI, else $AACLIP_HOME/ray_results (never ~/ray_results)."""
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve() if storage else aaclip_home() / "ray_results")


TUNER_STATE = "tuner.pkl"  # what building a Ray Tuner writes into its experiment folder (ray.tune.impl.tuner_internal)


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem Ray's storage uses for a local path or a URI (s3://, gs://, file://), and the path on it."""
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def experiment_folder_exists(experiment_path: str) -> bool:
    filesystem, path = _filesystem(experiment_path)
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def remove_tuner_state(experiment_path: str, folder_existed: bool) -> None:
    """Undo what building a Tuner wrote, locally or in a bucket alike: the experiment folder it made, or only its
    state file in a folder that was there before (whatever else that folder holds is not this launch's)."""
    filesystem, path = _filesystem(experiment_path)
    if not folder_existed:
        filesystem.delete_dir(path)
    elif filesystem.get_file_info(f"{path}/{TUNER_STATE}").type == pyarrow.fs.FileType.File:
        filesystem.delete_file(f"{path}/{TUNER_STATE}")


OPTUNA_STORAGE_VARIABLE = "AACLIP_OPTUNA_STORAGE"  # keeps a database password out of the spec (docker/)


def optuna_storage_url(study: Study) -> str:
    if study.spec.searcher.storage or os.environ.get(OPTUNA_STORAGE_VARIABLE):
        return study.spec.searcher.storage or os.environ[OPTUNA_STORAGE_VARIABLE]
    # optuna-dashboard sqlite:///... shows the running study. The folder is made when the storage is opened.
    return f"sqlite:///{aaclip_home() / 'optuna' / 'optuna.db'}"


def without_password(url: str) -> str:
    """What the parent run may show of a storage URL: tags are readable by anyone with access to the run."""
    return make_url(url).render_as_string(hide_password=True)


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    # Two studies started at once on one home would both create a new database's tables (and one fails).
    database = Path(make_url(url).database)
    database.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(database.with_suffix(".lock")):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
