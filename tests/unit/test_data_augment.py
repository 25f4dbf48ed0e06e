"""AnomalyDataset: preprocessing, and augmentations that are pure functions of (data seed, epoch, image id)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from aaclip.config import DatasetSpec
from aaclip.data import AnomalyDataset, Record, load_records
from aaclip.data.transforms import CLIP_MEAN, CLIP_STD, AugmentDraw, apply_geometry, draw_augmentation

SIZE = 32


@pytest.fixture
def records(make_synthetic):
    return load_records(DatasetSpec(kind="mvtec", root=str(make_synthetic(normal=2, anomalous=2, size=48))))


@pytest.fixture
def marked(tmp_path) -> Record:
    """An image whose defect is pure white exactly where its mask is set; no other pixel is white."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x * 4, y * 4, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[3:9, 20:29] = 255
    pixels[mask > 0] = 255
    Image.fromarray(pixels).save(tmp_path / "marked.png")
    Image.fromarray(mask).save(tmp_path / "marked_mask.png")
    return Record(tmp_path / "marked.png", tmp_path / "marked_mask.png", 1, "weave", "weave/marked.png")


def item(records, augment, epoch=0, data_seed=0, index=0, size=SIZE):
    dataset = AnomalyDataset(records, size, augment, data_seed=data_seed)  # a fresh instance: no hidden state
    dataset.set_epoch(epoch)
    return dataset[index]


def test_item_shapes_types_and_normal_masks(records):
    dataset = AnomalyDataset(records, SIZE, "stage2")
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (1, SIZE, SIZE) and sample["mask"].dtype == torch.float32
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        assert sample["label"].item() == records[index].label
        assert (sample["class_name"], sample["image_id"], sample["index"]) == (
            records[index].class_name, records[index].image_id, index)
        if records[index].label == 0:
            assert not sample["mask"].any()


def test_preprocessing_is_clip_normalisation(tmp_path):
    Image.new("RGB", (40, 24), (200, 100, 50)).save(tmp_path / "flat.png")
    record = Record(tmp_path / "flat.png", None, 0, "weave", "flat.png")
    image = AnomalyDataset([record], SIZE, "none")[0]["image"]
    expected = [(value / 255 - mean) / std for value, mean, std in zip((200, 100, 50), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(image, image[:, :1, :1].expand_as(image), atol=1e-5)  # resized, not cropped


@pytest.mark.parametrize("augment", ["stage1", "stage2"])
def test_same_seed_epoch_and_image_give_identical_tensors(records, augment):
    first, second = item(records, augment, epoch=3, index=-1), item(records, augment, epoch=3, index=-1)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


@pytest.mark.parametrize("augment", ["stage1", "stage2"])
def test_another_epoch_or_data_seed_gives_another_view(records, augment):
    base = item(records, augment, epoch=0)["image"]
    assert not torch.equal(item(records, augment, epoch=1)["image"], base)
    assert not torch.equal(item(records, augment, epoch=0, data_seed=1)["image"], base)


def test_no_augmentation_ignores_epoch_and_data_seed(records):
    dataset = AnomalyDataset(records, SIZE, "none", data_seed=4)
    key, image = dataset.draw_key(0), dataset[0]["image"]
    dataset.set_epoch(9)
    assert dataset.draw_key(0) == key and torch.equal(dataset[0]["image"], image)
    assert AnomalyDataset(records, SIZE, "none", data_seed=5).draw_key(0) == key


def test_draw_key_names_everything_the_item_depends_on(records):
    dataset = AnomalyDataset(records, SIZE, "stage2")
    first = dataset.draw_key(0)
    assert AnomalyDataset(records, SIZE, "stage2").draw_key(0) == first  # stable across instances
    keys = {first, dataset.draw_key(1)}
    dataset.set_epoch(1)
    keys.add(dataset.draw_key(0))
    keys.add(AnomalyDataset(records, SIZE, "stage1").draw_key(0))
    keys.add(AnomalyDataset(records, SIZE * 2, "stage2").draw_key(0))
    keys.add(AnomalyDataset(records, SIZE, "stage2", data_seed=1).draw_key(0))
    assert len(keys) == 6


def test_hflip_moves_a_mask_pixel_and_its_image_pixel_together():
    image, mask = torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)
    image[:, 2, 1], mask[0, 2, 1] = 5.0, 1.0
    flipped_image, flipped_mask = apply_geometry(image, mask, AugmentDraw(hflip=True))
    assert flipped_mask[0, 2, 6] == 1 and flipped_mask.sum() == 1
    assert (flipped_image[:, 2, 6] == 5).all() and flipped_image.abs().sum() == 15


def test_image_and_mask_move_together_under_every_draw(marked):
    white = torch.tensor([(1 - mean) / std for mean, std in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    moved = 0
    for epoch in range(12):
        sample = item([marked], "stage1", epoch=epoch)
        is_white = torch.isclose(sample["image"], white, atol=1e-4).all(dim=0)
        assert torch.equal(is_white, sample["mask"][0].bool()), f"epoch {epoch}"
        moved += not torch.equal(sample["mask"], item([marked], "none")["mask"])
    assert moved > 6  # the geometric draws do happen


def test_stage2_adds_colour_to_the_geometry_of_stage1(marked):
    for epoch in range(4):
        stage1, stage2 = item([marked], "stage1", epoch=epoch), item([marked], "stage2", epoch=epoch)
        assert torch.equal(stage1["mask"], stage2["mask"])
    draws = [draw_augmentation("stage2", 0, epoch, "weave/marked.png") for epoch in range(20)]
    assert any(draw.brightness is not None for draw in draws)
    assert all(draw.brightness is None or 0.5 <= draw.brightness <= 1.5 for draw in draws)
    assert all(draw.angle is None or abs(draw.angle) <= 30 for draw in draws)
    assert all(draw.translate is None or max(map(abs, draw.translate)) <= 0.15 for draw in draws)


def test_augmentation_does_not_touch_the_global_rng(records):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    numpy_before = np.random.get_state()[1].copy()
    item(records, "stage2", epoch=2)
    assert torch.equal(torch.rand(3), expected)
    assert np.array_equal(np.random.get_state()[1], numpy_before)


def test_unknown_augment_is_refused(records):
    with pytest.raises(ValueError, match="stage3"):
        AnomalyDataset(records, SIZE, "stage3")


def test_normalization_constants_are_open_clips():
    """The retyped CLIP mean and std (see aaclip.data.transforms) are exactly open_clip's OpenAI constants."""
    assert (CLIP_MEAN, CLIP_STD) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
