"""A launch that fails after its Tuner was built leaves no Ray state behind, on a local path and behind a URI alike.

The Tuner is Ray's own (building one writes its state without starting Ray); file:// stands in for s3://: both
are URIs that Ray and study/storage.py reach through pyarrow's filesystems.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from study.storage import experiment_folder_exists, remove_tuner_state


def build_tuner(storage: str) -> None:
    tune.Tuner(lambda config: None, run_config=tune.RunConfig(name="study", storage_path=storage))


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "uri"])
def test_a_folder_the_launch_made_goes_away(tmp_path: Path, as_uri: bool) -> None:
    storage = f"file://{tmp_path}" if as_uri else str(tmp_path)
    experiment = f"{storage}/study"
    existed = experiment_folder_exists(experiment)
    build_tuner(storage)
    assert not existed and tune.Tuner.can_restore(experiment)
    remove_tuner_state(experiment, existed)
    assert not (tmp_path / "study").exists()


def test_a_folder_that_was_there_keeps_what_it_held(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("the user's")
    experiment = f"file://{tmp_path}/study"
    existed = experiment_folder_exists(experiment)
    build_tuner(f"file://{tmp_path}")
    remove_tuner_state(experiment, existed)
    assert existed and not tune.Tuner.can_restore(experiment)
    assert (tmp_path / "study" / "notes.txt").read_text() == "the user's"
