"""MVTec-AD layout (reference §11.2):

    <class>/train/good/000.png                      train: normal images only
    <class>/test/good/000.png                       normal test images
    <class>/test/<defect>/000.png                   anomalous test images, one folder per defect type
    <class>/ground_truth/<defect>/000_mask.png      their masks (0 / 255)
"""
from __future__ import annotations

from pathlib import Path

from aaclip.data.records import Record, list_images, make_record, subfolders
from aaclip.errors import DataError
from aaclip.notices import notice

SPLITS = ("train", "test")
NORMAL_FOLDER = "good"


def read_mvtec(root: Path, split: str) -> list[Record]:
    """Every image of the split. A class is a folder of the root that has the split's folder."""
    if split not in SPLITS:
        raise DataError(f"{root}: an MVTec dataset has splits {', '.join(SPLITS)}, not {split!r}")
    records: list[Record] = []
    for class_folder in subfolders(root):
        split_folder = class_folder / split
        if not any(class_folder.iterdir()):
            notice(f"{class_folder}: empty category folder, skipped")
        if not split_folder.is_dir():
            continue  # licence files, split_csv and the like
        found = [_record(root, class_folder.name, split, defect_folder.name, image.name)
                 for defect_folder in subfolders(split_folder) for image in list_images(defect_folder)]
        if not found:
            notice(f"{split_folder}: no images in this category's {split} split, skipped")
        records.extend(found)
    return records


def _record(root: Path, class_name: str, split: str, defect: str, file_name: str) -> Record:
    image = f"{class_name}/{split}/{defect}/{file_name}"
    if defect == NORMAL_FOLDER:
        return make_record(root, image, None, 0, class_name)
    # The expected mask path even if the file is missing: check_record then names exactly what to add.
    mask = f"{class_name}/ground_truth/{defect}/{Path(file_name).stem}_mask.png"
    return make_record(root, image, mask, 1, class_name)
