"""Honest decoding: 16-bit and palette images scaled (not clipped), bombs refused, every file verified once."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from aaclip.config import DatasetSpec
from aaclip.data.checks import load_checked_records, warn_one_sided_classes
from aaclip.data.decode import decode, to_rgb
from aaclip.data.loading import load_records
from aaclip.data.transforms import open_rgb
from aaclip.data.verify import verify_decodes
from aaclip.errors import DataError
from aaclip.notices import AaclipWarning, recorded
from tests.bad_inputs import png_bomb


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0 .. 65535
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL really reads it as a high-bit-depth image
    rgb = np.asarray(open_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    naive = np.asarray(Image.open(path).convert("RGB"))
    assert (naive == 255).mean() > 0.9  # what PIL's plain convert makes of it: nearly solid white


def test_a_palette_image_decodes_to_its_colours(tmp_path):
    colours = np.zeros((8, 8, 3), dtype=np.uint8)
    colours[:4] = (200, 30, 10)
    colours[4:] = (5, 90, 250)
    path = tmp_path / "palette.png"
    Image.fromarray(colours).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), colours)


def test_float_images_in_unit_range_are_scaled(tmp_path):
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")
    assert np.asarray(to_rgb(image))[0, 0, 0] == 128


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path):
    path = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="bomb.png: image declares more pixels than the decompression-bomb limit"):
        decode(path, "image")


def test_verification_finds_a_truncated_file_and_caches_good_ones(make_synthetic, aaclip_home, tmp_path):
    records = load_records(DatasetSpec(kind="mvtec", root=str(make_synthetic(normal=2, anomalous=2))))
    verify_decodes(records)
    cache = aaclip_home / "cache" / "decoded.json"
    assert len(cache.read_text()) > 10
    broken = records[-1].image_path
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a new size: the cached verdict no longer applies
    with pytest.raises(DataError, match=f"{broken}: cannot decode image"):
        verify_decodes(records)
    broken.write_bytes(data)
    verify_decodes(records)


def test_training_on_normal_images_only_is_refused(make_synthetic, tiny_config):
    root = make_synthetic(normal=2, anomalous=2)
    data = tiny_config.model_copy(deep=True)
    data.data.train = DatasetSpec(kind="mvtec", root=str(root), split="train")
    with pytest.raises(DataError, match="split 'train' has no anomalous images"):
        load_checked_records(data)


def test_a_class_without_anomalies_is_warned_once_and_recorded(make_synthetic):
    records = [r for r in load_records(DatasetSpec(kind="mvtec", root=str(make_synthetic()))) if r.label == 0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_one_sided_classes("val", records)
        warn_one_sided_classes("val", records)
    messages = [str(w.message) for w in caught if issubclass(w.category, AaclipWarning)]
    assert len(messages) == 3 and all("has no anomalous images" in m for m in messages)  # once per class
    assert set(messages) <= set(recorded())


def test_an_empty_category_folder_is_warned(make_synthetic):
    root = make_synthetic()
    (root / "hollow").mkdir()
    with pytest.warns(AaclipWarning, match="hollow: empty category folder"):
        load_records(DatasetSpec(kind="mvtec", root=str(root)))


def test_each_run_records_its_own_notices_and_each_is_shown_once():
    from aaclip.notices import collecting, notice

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with collecting() as first:
            notice("data.val: something odd")
        with collecting() as second:
            notice("data.val: something odd")  # a second run in the same process records it again
            notice("data.val: something odd")
    assert first == second == ["data.val: something odd"]
    assert [str(w.message) for w in caught] == ["data.val: something odd"]
