"""Generated anomaly datasets in the real MVTec or VisA layout, for tests, smoke runs and the embedded default.

The images come from aaclip.data.synthetic_render (one generator per image, seeded by domain, seed, class, split,
defect and index): the same arguments give the same bytes, and a subset of categories gives the same images for
those categories. This module plans which images a tree holds, where each goes in the layout, and writes the
tree into a staging folder beside the root that is renamed into place, so a crash never leaves a half dataset
and concurrent trials that generate the same root agree on its contents.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from aaclip.data.synthetic_render import CLASS_DEFECTS, Item, render
from aaclip.errors import DataError
from aaclip.home import aaclip_home
from aaclip.prompts import SYNTHETIC_DOMAINS

MANIFEST = "synthetic.json"  # written last: its presence marks a complete tree
FORMAT_VERSION = 2  # 2: defect sizes and colours, object backgrounds


def synthetic_root(domain: str, seed: int) -> Path:
    return aaclip_home() / "data" / f"synthetic-{domain}-{seed}"


# ---------------------------------------------------------------------------------------------------------------
# Generating a tree, atomically


def generate_synthetic(root: Path, domain: str, seed: int, *, layout: Literal["mvtec", "visa"] = "mvtec",
                       normal_per_class: int = 10, anomalous_per_class: int = 10, image_size: int = 128,
                       categories: list[str] | None = None) -> Path:
    """Write the dataset to root (train and test normals, test anomalies) unless it is already there."""
    root = Path(root).expanduser().resolve()
    classes = _domain_classes(domain, categories)
    if layout not in LAYOUTS:
        raise DataError(f"unknown synthetic layout {layout!r}; expected {' or '.join(LAYOUTS)}")
    if image_size < 16 or normal_per_class < 0 or anomalous_per_class < 0:
        raise DataError(f"synthetic dataset sizes must be image_size >= 16 and counts >= 0, got {image_size}, "
                        f"{normal_per_class}, {anomalous_per_class}")
    wanted = {"format": FORMAT_VERSION, "domain": domain, "seed": seed, "layout": layout, "classes": classes,
              "normal_per_class": normal_per_class, "anomalous_per_class": anomalous_per_class,
              "image_size": image_size}
    existing = read_manifest(root)
    if existing is not None:
        _require_same(root, existing, wanted)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
    try:
        _write_tree(staging, wanted)
        (staging / MANIFEST).write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        _publish(staging, root, wanted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return root


def ensure_synthetic(root: Path, domain: str, seed: int) -> str:
    """Generate root with the default sizes if missing; return the layout it was written in."""
    manifest = read_manifest(root)
    if manifest is None:
        generate_synthetic(root, domain, seed)
        return "mvtec"
    # A tree from an older generator is refused (with a hint to delete it), never silently reused.
    _require_same(root, manifest, {"format": FORMAT_VERSION, "domain": domain, "seed": seed})
    return manifest["layout"]


def read_manifest(root: Path) -> dict[str, Any] | None:
    """None if root does not exist; the generation settings if it is a complete generated tree."""
    if not root.exists():
        return None
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: exists but is not a complete synthetic dataset (no {MANIFEST}); "
                        f"delete it to regenerate, or choose another root")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{path}: unreadable; delete {root} to regenerate it") from None


def _require_same(root: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    different = [f"{key} {existing.get(key)!r} (wanted {value!r})" for key, value in wanted.items()
                 if existing.get(key) != value]
    if different:
        raise DataError(f"{root}: holds a synthetic dataset generated with {', '.join(different)}; "
                        f"delete it or choose another root")


def _publish(staging: Path, root: Path, wanted: dict[str, Any]) -> None:
    try:
        os.rename(staging, root)
    except OSError:
        # Another process renamed its identical tree into place first; use that one.
        if read_manifest(root) != wanted:
            raise


def _domain_classes(domain: str, categories: list[str] | None) -> list[str]:
    if domain not in SYNTHETIC_DOMAINS:
        raise DataError(f"unknown synthetic domain {domain!r}; available: {', '.join(SYNTHETIC_DOMAINS)}")
    available = list(SYNTHETIC_DOMAINS[domain])
    unknown = [name for name in categories or [] if name not in available]
    if unknown:
        raise DataError(f"synthetic domain {domain!r} has no categor{'y' if len(unknown) == 1 else 'ies'} "
                        f"{', '.join(unknown)}; available: {', '.join(available)}")
    return [name for name in available if categories is None or name in categories]


# ---------------------------------------------------------------------------------------------------------------
# Layouts: where each generated image goes. One writer for both; only the path patterns differ.


@dataclass(frozen=True)
class Layout:
    image_folder: Callable[[Item], str]
    mask_folder: Callable[[Item], str]
    image_suffix: str
    mask_suffix: str
    digits: int


LAYOUTS = {
    "mvtec": Layout(lambda item: f"{item.class_name}/{item.split}/{item.defect or 'good'}",
                    lambda item: f"{item.class_name}/ground_truth/{item.defect}", ".png", "_mask.png", 3),
    "visa": Layout(lambda item: f"{item.class_name}/Data/Images/{'Anomaly' if item.defect else 'Normal'}",
                   lambda item: f"{item.class_name}/Data/Masks/Anomaly", ".JPG", ".png", 4),
}
VISA_SPLIT_FILE = "split_csv/1cls.csv"


def plan_items(classes: list[str], normal_per_class: int, anomalous_per_class: int) -> list[Item]:
    """Per class: train normals, test normals, then anomalies cycling through the class's defect types."""
    items: list[Item] = []
    for class_name in classes:
        items += [Item(class_name, split, None, i) for split in ("train", "test") for i in range(normal_per_class)]
        defects = CLASS_DEFECTS[class_name]
        per_defect: Counter[str] = Counter()
        for i in range(anomalous_per_class):
            defect = defects[i % len(defects)]
            items.append(Item(class_name, "test", defect, per_defect[defect]))
            per_defect[defect] += 1
    return items


def _write_tree(folder: Path, settings: dict[str, Any]) -> None:
    layout = LAYOUTS[settings["layout"]]
    numbers: Counter[str] = Counter()  # running file number per image folder
    rows: list[list[str]] = []
    for item in plan_items(settings["classes"], settings["normal_per_class"], settings["anomalous_per_class"]):
        image, mask = render(settings["domain"], settings["seed"], item, settings["image_size"])
        image_folder = layout.image_folder(item)
        number = f"{numbers[image_folder]:0{layout.digits}d}"
        numbers[image_folder] += 1
        image_path = f"{image_folder}/{number}{layout.image_suffix}"
        _save(Image.fromarray(image), folder / image_path)
        mask_path = ""
        if mask is not None:
            mask_path = f"{layout.mask_folder(item)}/{number}{layout.mask_suffix}"
            _save(Image.fromarray(mask), folder / mask_path)
        rows.append([item.class_name, item.split, "anomaly" if mask is not None else "normal", image_path, mask_path])
    if settings["layout"] == "visa":
        _write_visa_split(folder / VISA_SPLIT_FILE, rows)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG", compress_level=1)  # fast; files stay small at these sizes


def _write_visa_split(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["object", "split", "label", "image", "mask"])  # VisA's own header
        writer.writerows(rows)
