"""Every mistake a user can make launching or exporting a study: exit 2, one line naming the culprit, no
traceback, and nothing written (no folder, no Optuna database or study, no MLflow experiment or run).

Each case writes a small spec (the tiny base on generated MVTec trees, 1 trial) with one mistake and runs
`study.cli.main()` in this process. All of them are refused before Ray, MLflow or Optuna is touched, so no
server is needed; the last test proves that a launch failing after its parent run frees the name.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from study import cli
from tests.bad_inputs import changes, run_main, snapshot


@dataclass
class Case:
    name: str
    culprit: str  # part of the one error line; {dir} is the case folder
    spec: dict = field(default_factory=dict)  # changes to the spec (None deletes a key)
    args: list[str] = field(default_factory=list)  # extra `run` arguments, or a whole command line (see command)
    command: list[str] | None = None
    spec_text: bytes | None = None  # the spec file's raw content instead


CASES = [
    # the spec itself
    Case("spec-missing", "nowhere.yaml: no such study spec", command=["run", "{dir}/nowhere.yaml"]),
    Case("spec-binary", "spec.yaml: not a text YAML file", spec_text=bytes(range(256)) * 4),
    Case("spec-unknown-key", "spec.yaml: trails: unknown key", spec={"trails": {}}),
    Case("spec-bad-name", "name: 'a b' must be letters", spec={"name": "a b"}),
    Case("space-not-a-config-key", "space.optim.image_rl: not a TrainConfig key (did you mean optim.image_lr?)",
         spec={"space": {"optim.image_rl": {"uniform": [0.1, 0.2]}}}),
    Case("space-inverted", "space.optim.image_lr: loguniform range is inverted",
         spec={"space": {"optim.image_lr": {"loguniform": [1.0e-2, 1.0e-4]}}}),
    Case("space-log-zero", "loguniform range must be above 0",
         spec={"space": {"optim.image_lr": {"loguniform": [0.0, 1.0e-2]}}}),
    Case("space-empty-range", "uniform range is empty",
         spec={"space": {"cross_attention.image_scale.init": {"uniform": [0.1, 0.1]}}}),
    Case("space-two-distributions", "give exactly one of",
         spec={"space": {"optim.image_lr": {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}}}),
    Case("space-grid-without-grid-searcher", "grid values need `searcher: {kind: grid}`",
         spec={"space": {"seed": {"grid": [1, 2]}}}),
    Case("space-grid-of-lists", "grid values must be single values",
         spec={"space": {"adapters.levels": {"grid": [[1, 2], [1, 2, 3]]}}, "searcher": {"kind": "grid"}}),
    Case("space-choice-twice", "choice lists the same value twice",
         spec={"space": {"cross_attention.heads": {"choice": [2, 2]}}}),
    Case("space-when-later-key", "when: cross_attention.enabled must be a space key listed before",
         spec={"space": {"cross_attention.heads": {"choice": [1, 2], "when": {"cross_attention.enabled": True}},
                         "cross_attention.enabled": {"choice": [True, False]}}}),
    Case("space-heads-not-dividing", "trial cross_attention.heads=3: cross_attention.heads: 3 does not divide",
         spec={"space": {"cross_attention.heads": {"int": [1, 8]}}}),
    Case("space-image-until-too-deep", "adapters.image_until: 5 exceeds the depth",
         spec={"space": {"adapters.image_until": {"int": [1, 6]}}}),
    Case("space-levels-too-deep", "adapters.levels: [1, 2, 5] exceeds the depth",
         spec={"space": {"adapters.levels": {"choice": [[1, 2], [1, 2, 5]]}}}),
    Case("space-image-size", "model.image_size: 60 is not a multiple of the patch size",
         spec={"space": {"model.image_size": {"choice": [64, 60]}}}),
    Case("space-invalid-value", "optim.image_lr",
         spec={"space": {"optim.image_lr": {"uniform": [-1.0, 1.0]}}}),
    Case("objective-never-reported", "objective.metric: 'val/pixel_f1' is never reported",
         spec={"objective": {"metric": "val/pixel_f1"}}),
    Case("objective-aupro-off", "val/pixel_aupro is reported only with eval.aupro: true",
         spec={"objective": {"metric": "val/pixel_aupro"}}),
    Case("objective-aupro-off-in-a-trial", "trial eval.aupro=False: objective.metric: val/pixel_aupro",
         spec={"objective": {"metric": "val/pixel_aupro"}, "overrides": {"eval.aupro": True},
               "space": {"eval.aupro": {"choice": [True, False]}}}),
    Case("objective-unknown-class", "the validation data has no class 'moon'",
         spec={"objective": {"metric": "val/moon/pixel_auroc"}}),
    Case("base-missing", "base: nowhere: no such config", spec={"base": "nowhere"}),
    Case("overrides-unknown-key", "overrides.optim.imag_lr: not a TrainConfig key", spec={"overrides": {
        "optim.imag_lr": 1}}),
    Case("gpu-with-cpu-model", "trials.resources.gpu: 1.0 GPU per trial, but model.device is cpu",
         spec={"trials": {"resources": {"cpu": 1, "gpu": 1}}}),
    Case("reduction-factor", "scheduler.reduction_factor", spec={"scheduler": {"kind": "asha",
                                                                               "reduction_factor": 1}}),
    Case("base-data-missing", "nowhere: dataset root not found", spec={"overrides": {"data.val.root": "/nowhere"}}),
    Case("base-trains-on-normal-images", "split 'train' has no anomalous images",
         spec={"overrides": {"data.train.split": "train"}}),
    # where a launch writes
    Case("storage-under-proc", "storage: /proc/aaclip cannot hold the study's results",
         spec={"storage": "/proc/aaclip"}),
    Case("storage-below-a-file", "spec.yaml is a file, not a folder", spec={"storage": "{dir}/spec.yaml/results"}),
    Case("storage-flag-below-a-file", "spec.yaml is a file, not a folder", args=["--storage", "{dir}/spec.yaml/x"]),
    Case("storage-unreachable-s3", "storage: s3://no-such-bucket-aaclip-study/results: ",
         spec={"storage": "s3://no-such-bucket-aaclip-study/results"}),
    Case("optuna-not-a-url", "searcher.storage: 'not a url' is not a database URL",
         spec={"searcher": {"storage": "not a url"}}),
    Case("optuna-unknown-driver", "searcher.storage: nosuchdb://host/db: unusable",
         spec={"searcher": {"storage": "nosuchdb://host/db"}}),
    Case("optuna-unreachable", "searcher.storage: postgresql://someone@127.0.0.1:9/optuna: unusable",
         spec={"searcher": {"storage": "postgresql://someone@127.0.0.1:9/optuna"}}),
    Case("optuna-sqlite-under-proc", "searcher.storage: /proc/optuna.db cannot be created",
         spec={"searcher": {"storage": "sqlite:////proc/optuna.db"}}),
    Case("optuna-sqlite-in-memory", "an in-memory SQLite database", spec={"searcher": {"storage": "sqlite://"}}),
    Case("tracking-unsupported-scheme", "tracking URI 'ftp://example.org/mlflow': not usable",
         args=["--tracking-uri", "ftp://example.org/mlflow"]),
    # export
    Case("export-onto-a-folder", "-o {dir}: is a folder", command=["export", "any", "-o", "{dir}"]),
    Case("report-onto-a-file", "-o {dir}/spec.yaml: is a file", command=["report", "any", "-o", "{dir}/spec.yaml"]),
    Case("report-under-proc", "-o /proc/aaclip-report: cannot be created",
         command=["report", "any", "-o", "/proc/aaclip-report"]),
    Case("export-into-a-missing-folder", "folder {dir}/nowhere does not exist",
         command=["export", "any", "-o", "{dir}/nowhere/best.yaml"]),
]


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("space",):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_spec(name: str, tiny_data: dict) -> dict:
    return {
        "name": name, "base": "tiny",
        "overrides": {"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1,
                      "eval.aupro": False, "data.test": None,
                      "data.train": {"kind": "mvtec", "root": str(tiny_data["texture"])},
                      "data.val": {"kind": "mvtec", "root": str(tiny_data["object"])}},
        "objective": {"metric": "val/pixel_auroc", "mode": "max"},
        "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "scheduler": {"kind": "none"}, "baseline": False,
        "trials": {"num_samples": 1, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0},
    }


def _fill(value, folder: Path):
    if isinstance(value, str):
        return value.replace("{dir}", str(folder))
    if isinstance(value, dict):
        return {key: _fill(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, folder) for item in value]
    return value


def _argv(case: Case, folder: Path, tiny_data: dict) -> list[str]:
    spec_file = folder / "spec.yaml"
    if case.spec_text is not None:
        spec_file.write_bytes(case.spec_text)
    else:
        changes_ = _fill(case.spec, folder)
        if "overrides" in changes_:
            changes_["overrides"] = {**base_spec("x", tiny_data)["overrides"], **changes_["overrides"]}
        spec = _merge(base_spec(f"bad-{case.name}", tiny_data), changes_)
        if "overrides" in changes_:  # as written: _merge would drop the base's `data.test: null`
            spec["overrides"] = changes_["overrides"]
        spec.setdefault("storage", str(folder / "ray_results"))
        spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = case.command or ["run", str(spec_file), *case.args]
    return ["aaclip-study", *(_fill(part, folder) for part in command)]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_study_refuses(case: Case, tmp_path: Path, tiny_data, aaclip_home: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    aaclip_home.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = _argv(case, folder, tiny_data)
    watched = [folder, aaclip_home, *tiny_data.values()]
    before = snapshot(*watched)
    outcome = run_main(cli.main, argv, capsys, monkeypatch)
    outcome.assert_refused(_fill(case.culprit, folder))
    # The home folder itself and its caches (decoded-image verdicts, generated data) are not the study's.
    written = [path for path in changes(before, snapshot(*watched))
               if path != str(aaclip_home) and not path.startswith(str(aaclip_home / "cache"))]
    assert written == [], "a refused launch wrote files"
    assert not (aaclip_home / "mlflow").exists() and not (aaclip_home / "optuna").exists()


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 35 and len({case.name for case in CASES}) == len(CASES)


def test_the_installed_entry_point_refuses_a_storage_under_proc(tmp_path: Path, tiny_data, aaclip_home) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec = {**base_spec("proc-storage", tiny_data), "storage": "/proc/aaclip"}
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run([sys.executable, "-m", "study.cli", "run", str(work / "spec.yaml")],
                            capture_output=True, text=True, cwd=work, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "/proc/aaclip" in lines[0], result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["spec.yaml"]


def test_a_launch_failing_after_its_parent_run_frees_the_name(ray_cluster, mlflow_uri, study_home, tiny_data,
                                                              tmp_path: Path, monkeypatch) -> None:
    """Fault injection after the parent run and the Optuna study exist (a failure no preflight foresees):
    the parent run ends FAILED in MLflow's trash, the Optuna study is gone, and the same name launches again."""
    import optuna
    from mlflow.entities import ViewType

    from study import launch
    from study.spec import parse_study
    from study.record import find_parent_run
    from study.tracking import tracking_client

    real_make_tuner = launch.make_tuner

    def failing_make_tuner(*args, **kwargs):
        real_make_tuner(*args, **kwargs)  # the Optuna study is created here
        raise RuntimeError("injected launch failure")

    monkeypatch.setattr(launch, "make_tuner", failing_make_tuner)
    spec = {**base_spec("launch-fails", tiny_data), "storage": str(tmp_path / "ray_results")}
    client = tracking_client(mlflow_uri)
    for attempt in (1, 2):  # the second launch is not refused as "already exists": the name is free
        with pytest.raises(RuntimeError, match="injected"):
            launch.run_study(parse_study(spec, source="spec.yaml"), tracking_uri=mlflow_uri, echo=lambda *a: None)
        assert find_parent_run(client, "launch-fails") is None
        storage = launch.optuna_storage(launch.optuna_storage_url(parse_study(spec, source="spec.yaml")))
        assert "launch-fails" not in optuna.get_all_study_names(storage)
    experiment = client.get_experiment_by_name("launch-fails")
    trashed = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [run.info.status for run in trashed] == ["FAILED", "FAILED"]
    assert all(run.data.tags.get("aaclip.launch") == "failed" for run in trashed)
