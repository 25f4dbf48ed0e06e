"""Every mistake a user can make with `aaclip`: exit 2, one line naming the culprit, no traceback, nothing written.

Each case runs `aaclip.cli.main()` in this process in a fresh folder holding `config.yaml` (the tiny config on
small generated MVTec trees) and, where the case needs them, private copies of the data to break. The folder,
the data and the run folder are compared before and after: a refused command leaves them as they were.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from aaclip import cli
from tests.bad_inputs import changes, png_bomb, run_main, snapshot, truncate


@dataclass
class Case:
    name: str
    args: list[str]  # {config}, {dir}, {train}, {val} are filled in
    culprit: str  # part of the one error line; same placeholders
    setup: Callable[[Path, dict], None] | None = None  # (case folder, placeholders) -> files to break
    private_data: bool = False  # copy the data trees into the case folder (the case breaks them)
    extra: list[str] = field(default_factory=list)


def _write(relative: str, content: bytes | str):
    def setup(folder: Path, names: dict) -> None:
        path = folder / relative.format(**names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _torch_save(relative: str, make: Callable):
    """torch.save(make(torch)) at folder/relative: a real file as torch writes it."""
    def setup(folder: Path, names: dict) -> None:
        import torch

        torch.save(make(torch), folder / relative)
    return setup


def _foreign_checkpoint(overrides: dict):
    """A real checkpoint written by this project for another configuration (or architecture)."""
    def setup(folder: Path, names: dict) -> None:
        from aaclip.checkpoint import save_checkpoint
        from aaclip.config import load_config

        other = load_config(Path(names["config"]), overrides)
        save_checkpoint(folder / "other" / "checkpoint", {}, {"position": {}}, other)
    return setup


def _first_image(root: Path, split_folder: str) -> Path:
    return sorted((root / "disc" / "test" / split_folder).glob("*.png"))[0]


def _break_val(action: Callable[[Path], object], split_folder: str = "good"):
    def setup(folder: Path, names: dict) -> None:
        action(_first_image(Path(names["val"]), split_folder))
    return setup


def _mask_of_wrong_size(folder: Path, names: dict) -> None:
    from PIL import Image

    mask = sorted((Path(names["val"]) / "disc" / "ground_truth").rglob("*.png"))[0]
    Image.new("L", (7, 7)).save(mask)


def _remove_a_mask(folder: Path, names: dict) -> None:
    sorted((Path(names["val"]) / "disc" / "ground_truth").rglob("*.png"))[0].unlink()


def _existing_run(folder: Path, names: dict) -> None:
    (folder / "run").mkdir()
    (folder / "run" / "config.yaml").write_text("seed: 1\n")


def _jsonl(content: str):
    return _write("jsonl/test.jsonl", content)


TRAIN = ["train", "{config}", "--out", "{dir}/run"]
SET = "--set"
CASES = [
    # configs
    Case("unknown-key", [*TRAIN, SET, "optim.imag_lr=1"], "optim.imag_lr: unknown key"),
    Case("negative-lr", [*TRAIN, SET, "optim.image_lr=-1"], "optim.image_lr"),
    Case("no-such-config", ["train", "no-such-config", "--out", "{dir}/run"], "no-such-config: no such config"),
    Case("bad-yaml", ["train", "{dir}/bad.yaml", "--out", "{dir}/run"], "bad.yaml: not valid YAML",
         _write("bad.yaml", "seed: [1,\n")),
    Case("binary-config", ["train", "{dir}/weights.bin", "--out", "{dir}/run"], "weights.bin: not a text YAML",
         _write("weights.bin", bytes(range(256)) * 8)),
    Case("list-config", ["train", "{dir}/list.yaml", "--out", "{dir}/run"], "list.yaml: expected a mapping",
         _write("list.yaml", "- 1\n- 2\n")),
    Case("even-blur-kernel", [*TRAIN, SET, "eval.blur.kernel=4"], "eval.blur.kernel: must be odd"),
    Case("device-string", [*TRAIN, SET, "model.device=gpu"], "model.device: must be auto, cpu, cuda"),
    Case("device-missing", [*TRAIN, SET, "model.device=cuda:99"], "model.device: cuda:99 requested"),
    Case("heads-not-dividing", [*TRAIN, SET, "cross_attention.heads=3"], "cross_attention.heads: 3 does not divide"),
    Case("levels-too-deep", [*TRAIN, SET, "adapters.levels=[1, 2, 5]"], "adapters.levels: [1, 2, 5] exceeds"),
    Case("levels-unsorted", [*TRAIN, SET, "adapters.levels=[2, 1]"], "adapters.levels"),
    Case("image-until-too-deep", [*TRAIN, SET, "adapters.image_until=9"], "adapters.image_until: 9 exceeds"),
    Case("text-until-too-deep", [*TRAIN, SET, "adapters.text_until=9"], "adapters.text_until: 9 exceeds"),
    Case("surgery-too-deep", [*TRAIN, SET, "stage1.surgery_from_block=4"], "stage1.surgery_from_block: 4"),
    Case("image-size-not-patch-multiple", [*TRAIN, SET, "model.image_size=60"], "model.image_size: 60 is not"),
    Case("override-without-equals", [*TRAIN, SET, "optim.image_lr"], "--set 'optim.image_lr': expected KEY=VALUE"),
    Case("override-into-a-value", [*TRAIN, SET, "seed.value=1"], "seed.value: seed is not a section"),
    Case("unknown-architecture", [*TRAIN, SET, "model.name=ViT-Q-99"], "model.name: unknown architecture"),
    Case("betas-out-of-range", [*TRAIN, SET, "optim.betas=[0.5, 1.5]"], "optim: betas must lie in (0, 1)"),
    Case("milestones-out-of-range", [*TRAIN, SET, "optim.milestones=[0.5, 2]"], "milestones are fractions"),
    Case("zero-loops", [*TRAIN, SET, "feedback.loops=0"], "feedback.loops"),
    Case("negative-workers", [*TRAIN, SET, "data.workers=-1"], "data.workers"),
    Case("zero-shots", [*TRAIN, SET, "data.train.shots=0"], "data.train.shots"),
    Case("zero-batch", [*TRAIN, SET, "data.image_batch=0"], "data.image_batch"),
    Case("dropout-one", [*TRAIN, SET, "cross_attention.dropout=1.0"], "cross_attention.dropout"),
    Case("loops-not-a-number", [*TRAIN, SET, "feedback.loops=abc"], "feedback.loops"),
    Case("unknown-precision", [*TRAIN, SET, "model.precision=fp16"], "model.precision"),
    Case("unknown-eval-every", [*TRAIN, SET, "eval.every=sometimes"], "eval.every"),
    Case("val-equals-test", [*TRAIN, SET, "data.test={kind: mvtec, root: '{val}'}"], "data.val equals data.test"),
    Case("dataset-kind", [*TRAIN, SET, "data.val.kind=coco"], "data.val.kind"),
    Case("dataset-without-root", [*TRAIN, SET, "data.val={kind: mvtec}"], "a mvtec dataset needs a root"),
    # data
    Case("missing-root", [*TRAIN, SET, "data.val.root={dir}/nowhere"], "nowhere: dataset root not found"),
    Case("root-is-a-file", [*TRAIN, SET, "data.val.root={dir}/bad.yaml"], "must be a folder",
         _write("bad.yaml", "x")),
    Case("empty-root", [*TRAIN, SET, "data.val.root={dir}/empty"], "no test images found",
         _write("empty/.keep", "")),
    Case("unknown-category", [*TRAIN, SET, "data.val.categories=[disc, moon]"], "unknown category moon"),
    Case("unknown-split", [*TRAIN, SET, "data.val.split=val"], "not 'val'"),
    Case("normal-only-training", [*TRAIN, SET, "data.train.split=train"], "split 'train' has no anomalous images"),
    Case("garbage-val-image", [*TRAIN], "cannot read image",
         _break_val(lambda path: path.write_bytes(b"not an image")), private_data=True),
    Case("truncated-val-image", [*TRAIN], "cannot decode image", _break_val(truncate), private_data=True),
    Case("decompression-bomb", [*TRAIN], "decompression-bomb limit", _break_val(png_bomb), private_data=True),
    Case("mask-wrong-size", [*TRAIN], "masks must match their image's size", _mask_of_wrong_size,
         private_data=True),
    Case("mask-missing", [*TRAIN], "mask not found", _remove_a_mask, private_data=True),
    Case("jsonl-bad-line", [*TRAIN, SET, "data.val={kind: jsonl, root: '{dir}/jsonl'}"], "test.jsonl:1: not valid",
         _jsonl("{not json\n")),
    Case("jsonl-bad-row", [*TRAIN, SET, "data.val={kind: jsonl, root: '{dir}/jsonl'}"], "test.jsonl:1: missing",
         _jsonl('{"image_path": "a.png", "label": 7, "class_name": "a"}\n')),
    Case("jsonl-image-missing", [*TRAIN, SET, "data.val={kind: jsonl, root: '{dir}/jsonl'}"],
         "jsonl/a.png: image file not found",
         _jsonl('{"image_path": "a.png", "label": 0, "class_name": "a"}\n')),
    Case("jsonl-missing-file", [*TRAIN, SET, "data.val={kind: jsonl, root: '{dir}'}"], "test.jsonl: metadata"),
    Case("visa-without-split-file", [*TRAIN, SET, "data.val={kind: visa, root: '{dir}/visa'}"], "1cls.csv",
         _write("visa/readme.txt", "")),
    Case("test-split-not-set", [*TRAIN, "--test"], "data.test is not set"),
    # checkpoints and weights
    Case("resume-missing", [*TRAIN, "--resume", "{dir}/nowhere"], "--resume {dir}/nowhere: not a checkpoint"),
    Case("resume-garbage", [*TRAIN, "--resume", "{dir}/ck"], "state.pt: not a readable checkpoint state",
         _write("ck/state.pt", b"garbage")),
    Case("resume-other-config", [*TRAIN, "--resume", "{dir}/other/checkpoint"], "a different configuration",
         _foreign_checkpoint({"seed": 5})),
    Case("resume-other-architecture", [*TRAIN, "--resume", "{dir}/other/checkpoint"], "is for aaclip-small",
         _foreign_checkpoint({"model.name": "aaclip-small", "model.image_size": 112})),
    Case("init-missing", [*TRAIN, SET, "init.text_adapter={dir}/none.pth"], "init.text_adapter: {dir}/none.pth"),
    Case("init-list", [*TRAIN, SET, "init.image_adapter={dir}/list.pth"], "init.image_adapter",
         _torch_save("list.pth", lambda torch: {"image_adapter": [torch.zeros(2)]})),
    Case("init-not-reference", [*TRAIN, SET, "init.image_adapter={dir}/other.pth"], "no 'image_adapter' entry",
         _torch_save("other.pth", lambda torch: {"weights": torch.zeros(2)})),
    Case("weights-missing", [*TRAIN, SET, "model.pretrained={dir}/none.pt"], "model.pretrained: weights file"),
    Case("weights-list", [*TRAIN, SET, "model.pretrained={dir}/list.pt"], "list.pt is not a readable CLIP",
         _torch_save("list.pt", lambda torch: [torch.zeros(2)])),
    Case("weights-empty-dict", [*TRAIN, SET, "model.pretrained={dir}/empty.pt"], "empty.pt",
         _torch_save("empty.pt", lambda torch: {})),
    Case("weights-garbage-safetensors", [*TRAIN, SET, "model.pretrained={dir}/w.safetensors"], "w.safetensors",
         _write("w.safetensors", b"garbage" * 10)),
    Case("weights-unknown-tag", [*TRAIN, SET, "model.pretrained=nosuchtag"], "'nosuchtag' is not a tag"),
    Case("evaluate-missing-checkpoint", ["evaluate", "{config}", "--checkpoint", "{dir}/nowhere"],
         "nowhere: not a checkpoint"),
    Case("evaluate-garbage-adapters", ["evaluate", "{config}", "--checkpoint", "{dir}/ck"],
         "adapters.pt: not a readable adapter file", _write("ck/adapters.pt", b"\x80garbage")),
    Case("evaluate-split", ["evaluate", "{config}", "--checkpoint", "{dir}", "--split", "train"],
         "--split: 'train' is not val or test"),
    # outputs
    Case("out-existing-run", [*TRAIN], "--out {dir}/run: already holds files", _existing_run),
    Case("out-is-a-file", ["train", "{config}", "--out", "{dir}/bad.yaml"], "is a file, not a folder",
         _write("bad.yaml", "x")),
    Case("out-below-a-file", ["train", "{config}", "--out", "{dir}/bad.yaml/run"], "bad.yaml is a file",
         _write("bad.yaml", "x")),
    Case("out-under-proc", ["train", "{config}", "--out", "/proc/aaclip-run"], "kernel's virtual file system"),
    # other commands
    Case("synth-zero-images", ["data", "synth", "{dir}/synth", "--images", "0"], "--images: 0 must be at least 1"),
    Case("synth-under-proc", ["data", "synth", "/proc/aaclip-synth"], "/proc/aaclip-synth: cannot be created"),
    Case("synth-below-a-file", ["data", "synth", "{dir}/bad.yaml/synth"], "bad.yaml is a file, not a folder",
         _write("bad.yaml", "x")),
    Case("synth-onto-a-file", ["data", "synth", "{dir}/bad.yaml"], "bad.yaml: cannot be created",
         _write("bad.yaml", "x")),
    Case("synth-layout", ["data", "synth", "{dir}/synth", "--layout", "coco"], "--layout: 'coco'"),
    Case("context-norm-negative", ["diagnose", "gradients", "{config}", "--context-norm", "-5"],
         "--context-norm: -5.0 must be a positive"),
    Case("context-norm-zero", ["diagnose", "gradients", "{config}", "--context-norm", "0"], "--context-norm: 0.0"),
]


@pytest.fixture
def case_folder(tmp_path: Path, tiny_config, tiny_data, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "config.yaml").write_text(tiny_config.to_yaml())
    return folder


def _fill(text: str, names: dict) -> str:
    for key, value in names.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _prepare(case: Case, folder: Path, tiny_data: dict, tiny_config) -> dict:
    names = {"dir": folder, "config": folder / "config.yaml", "train": tiny_data["texture"],
             "val": tiny_data["object"]}
    if case.private_data:
        for key, domain in (("train", "texture"), ("val", "object")):
            names[key] = folder / "data" / domain
            shutil.copytree(tiny_data[domain], names[key])
        data = tiny_config.to_dict()
        data["data"]["train"]["root"], data["data"]["val"]["root"] = str(names["train"]), str(names["val"])
        (folder / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if case.setup is not None:
        case.setup(folder, names)
    return names


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_aaclip_refuses(case: Case, case_folder: Path, tiny_data, tiny_config, capsys, monkeypatch) -> None:
    names = _prepare(case, case_folder, tiny_data, tiny_config)
    watched = [case_folder, *tiny_data.values()]
    before = snapshot(*watched)
    outcome = run_main(cli.main, ["aaclip", *(_fill(arg, names) for arg in case.args)], capsys, monkeypatch)
    outcome.assert_refused(_fill(case.culprit, names))
    assert changes(before, snapshot(*watched)) == [], "a refused command wrote files"


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)


def test_a_truncated_val_image_is_refused_before_any_training(case_folder: Path, tiny_data, tiny_config,
                                                              capsys, monkeypatch) -> None:
    """The issue's case: found at start-up (no epoch line printed), not after the whole run."""
    names = _prepare(CASES[[c.name for c in CASES].index("truncated-val-image")], case_folder, tiny_data,
                     tiny_config)
    outcome = run_main(cli.main, ["aaclip", "train", str(names["config"]), "--out", str(case_folder / "run")],
                       capsys, monkeypatch)
    outcome.assert_refused(str(_first_image(Path(names["val"]), "good")))
    assert "epoch" not in outcome.stdout and not (case_folder / "run").exists()


@pytest.mark.parametrize("args, culprit", [
    (["train", "tiny", "--set", "optim.imag_lr=1"], "optim.imag_lr: unknown key"),
    (["train", "tiny", "--set", "cross_attention.heads=3"], "cross_attention.heads: 3"),
    (["train", "tiny", "--out", "/proc/aaclip-run"], "/proc/aaclip-run"),
])
def test_the_installed_entry_point_refuses_the_same_way(args: list[str], culprit: str, tmp_path: Path,
                                                        aaclip_home: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    """A real process: exit 2, one line; and config refusals never import torch (they answer in ~1 s)."""
    probe = ("import runpy, sys; sys.argv = ['aaclip', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('aaclip', run_name='__main__')\n"
             "finally:\n    print('torch imported' if 'torch' in sys.modules else 'torch not imported', "
             "file=sys.stdout)\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=work,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and culprit in lines[0], result.stderr
    assert "torch not imported" in result.stdout
    assert list(work.iterdir()) == []


def test_suspicious_data_is_warned_once_and_recorded_in_the_run(case_folder: Path, tiny_data, tiny_config,
                                                                 capsys, monkeypatch) -> None:
    """Legal but odd: a val class without anomalous images trains, warns once by name, and is recorded."""
    case = Case("one-sided-val-class", [], "", private_data=True)
    names = _prepare(case, case_folder, tiny_data, tiny_config)
    disc = Path(names["val"]) / "disc"
    for folder in [*(disc / "test").iterdir(), disc / "ground_truth"]:
        if folder.name != "good":
            shutil.rmtree(folder)
    (Path(names["val"]) / "hollow").mkdir()  # an empty category folder
    out = case_folder / "run"
    outcome = run_main(cli.main, ["aaclip", "train", str(names["config"]), "--out", str(out), "--set",
                                  "feedback.loops=1"], capsys, monkeypatch)
    assert outcome.code == 0, outcome.stderr
    warned = [line for line in outcome.stderr.splitlines() if line.startswith("warning: ")]
    assert sum("class 'disc' has no anomalous images" in line for line in warned) == 1, outcome.stderr
    assert sum("hollow: empty category folder" in line for line in warned) == 1, outcome.stderr
    recorded = yaml.safe_load((out / "warnings.json").read_text())
    assert any("class 'disc' has no anomalous images" in note for note in recorded)
    assert any("undefined (NaN) metrics" in note and "val/disc/pixel_auroc" in note for note in recorded)
