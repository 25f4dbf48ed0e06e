"""Checks that can refuse a launch, run before anything of the study is written (DESIGN §9: all-or-nothing).

The spec's own checks (keys, ranges, every reachable point fitting the backbone, the objective being reported)
run when the spec is parsed (study.spec). Here: the places a launch writes to, checked without writing there.
- Ray storage: a local folder must be creatable by this user (not below a regular file, not under /proc, not
  in a read-only folder); a URI (s3://, gs://, ...) must answer a read of its path.
- Optuna storage: the URL must parse as a database URL, its driver must be installed, and the database must
  accept a connection (for SQLite: its folder must be creatable).
- Local runs: the base's datasets are read (or generated) once, in the driver (preflight_data).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pyarrow.fs
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from aaclip.data.checks import load_checked_records
from aaclip.data.records import class_names
from aaclip.outputs import creatable_folder_problem
from study.errors import StudyError
from study.spec import Study

CONNECT_TIMEOUT_S = 15.0


def check_launch_targets(storage_root: str, optuna_url: str, source: str) -> None:
    check_storage(storage_root, source)
    check_optuna_storage(optuna_url, source)


def check_storage(root: str, source: str) -> None:
    if "://" not in root:
        problem = creatable_folder_problem(Path(root))
        if problem:
            raise StudyError(f"{source}: storage: {root} cannot hold the study's results: {problem}")
        return
    if root.startswith("file://"):
        return check_storage(root.removeprefix("file://"), source)
    _within_timeout(lambda: _read_uri(root), f"{source}: storage: {root}")


def _read_uri(root: str) -> None:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(root)
    filesystem.get_file_info(path)  # a read: reachability and credentials, nothing written


def check_optuna_storage(url: str, source: str) -> None:
    where = f"{source}: searcher.storage"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StudyError(f"{where}: {url!r} is not a database URL (e.g. sqlite:////path/optuna.db or "
                         "postgresql://user@host/db)") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise StudyError(f"{where}: an in-memory SQLite database does not outlive the launch; name a file")
        problem = creatable_folder_problem(Path(database).parent)
        if problem:
            raise StudyError(f"{where}: {database} cannot be created: {problem}")
        return
    _within_timeout(lambda: _connect(url), f"{where}: {parsed.render_as_string(hide_password=True)}")


def _connect(url: str) -> None:
    engine = create_engine(url, pool_pre_ping=False)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _within_timeout(probe, where: str) -> None:
    """Run a network probe; any failure or a hang past CONNECT_TIMEOUT_S is one line naming `where`."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=CONNECT_TIMEOUT_S)
    except FutureTimeout:
        raise StudyError(f"{where}: no answer within {CONNECT_TIMEOUT_S:.0f} s; check the address and the "
                         "network") from None
    except Exception as error:  # noqa: BLE001 - drivers raise their own types; every one means "unusable"
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise StudyError(f"{where}: unusable ({error.__class__.__name__}{': ' + first if first else ''})") from None
    finally:
        pool.shutdown(wait=False)


def preflight_data(study: Study) -> None:
    """Local runs: read (or generate, for synthetic data) the base's datasets once, in the driver.

    A missing dataset is then one line before any trial starts, not the same traceback from every trial, and
    concurrent trials never race to generate the same synthetic dataset. Skipped for a remote cluster, whose
    data paths need not exist on the driver's machine.
    """
    # val and test disjoint, every image decodes
    validation_classes = class_names(load_checked_records(study.base_config, source=study.source)["val"])
    parts = study.spec.objective.metric.split("/")
    if len(parts) == 3 and parts[1] not in validation_classes:
        raise StudyError(f"{study.source}: objective.metric: the validation data has no class {parts[1]!r} "
                         f"(classes: {', '.join(validation_classes)})")
