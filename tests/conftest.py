"""Shared fixtures. Add new fixtures at the end; do not remove others' fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def make_synthetic(tmp_path: Path):
    """Factory for a small generated dataset under tmp_path, in the real MVTec or VisA layout (real files).

    make_synthetic(layout="visa", domain="object", normal=3, anomalous=3, size=32) -> root
    """
    from aaclip.data.synthetic import generate_synthetic

    def make(layout: str = "mvtec", domain: str = "texture", seed: int = 0, normal: int = 3, anomalous: int = 3,
             size: int = 32, name: str | None = None) -> Path:
        root = tmp_path / (name or f"{domain}-{layout}-{seed}")
        return generate_synthetic(root, domain, seed, layout=layout, normal_per_class=normal,
                                  anomalous_per_class=anomalous, image_size=size)

    return make


@pytest.fixture
def aaclip_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AACLIP_HOME pointed at a fresh folder, so nothing is written to the working directory's .aaclip."""
    home = tmp_path / "aaclip-home"
    monkeypatch.setenv("AACLIP_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small generated train (texture) and val (object) trees in the MVTec layout, shared by the session."""
    from aaclip.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("tiny-data")
    return {domain: generate_synthetic(root / domain, domain, 0, normal_per_class=3, anomalous_per_class=3,
                                       image_size=64) for domain in ("texture", "object")}


@pytest.fixture
def tiny_config(tiny_data: dict[str, Path], aaclip_home: Path):
    """The shipped tiny config on the small generated trees, with a short schedule (two loops)."""
    from aaclip.config import load_config

    overrides = {
        "data.train": {"kind": "mvtec", "root": str(tiny_data["texture"])},
        "data.val": {"kind": "mvtec", "root": str(tiny_data["object"])},
        "data.test": None,
        "feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 1,
        "data.text_batch": 6, "data.image_batch": 6, "eval.aupro": False,
    }
    return load_config("tiny", overrides)


@pytest.fixture
def restored_environment():
    """os.environ as it was before the test: for code that sets the driver's environment (MLFLOW_TRACKING_URI,
    Tune's settings) in the test process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
