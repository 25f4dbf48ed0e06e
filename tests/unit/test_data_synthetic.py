"""Synthetic generation: deterministic bytes, atomic publication, exact and visible defects in both domains."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aaclip.data import synthetic_render as synthetic
from aaclip.data.synthetic import MANIFEST, generate_synthetic, plan_items
from aaclip.data.synthetic_render import DEFECT_TYPES, Item, render
from aaclip.errors import DataError
from aaclip.prompts import SYNTHETIC_DOMAINS
from aaclip.seeds import stable_seed


def tree_bytes(root) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def images(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in tree.items() if name != MANIFEST}


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_same_arguments_give_the_same_bytes(tmp_path, layout):
    first = generate_synthetic(tmp_path / "a", "object", 7, layout=layout, normal_per_class=2, image_size=32)
    second = generate_synthetic(tmp_path / "b", "object", 7, layout=layout, normal_per_class=2, image_size=32)
    assert tree_bytes(first) == tree_bytes(second)


def test_another_seed_gives_other_images(tmp_path):
    first = images(tree_bytes(generate_synthetic(tmp_path / "a", "texture", 0, image_size=32)))
    second = images(tree_bytes(generate_synthetic(tmp_path / "b", "texture", 1, image_size=32)))
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if "ground_truth" not in name)


def test_a_subset_of_categories_gives_the_same_images(tmp_path):
    full = images(tree_bytes(generate_synthetic(tmp_path / "a", "texture", 0, image_size=32)))
    planks = images(tree_bytes(generate_synthetic(tmp_path / "b", "texture", 0, image_size=32,
                                                  categories=["planks"])))
    assert planks and planks == {name: data for name, data in full.items() if name.startswith("planks/")}


def test_existing_complete_root_is_left_untouched(tmp_path):
    root = generate_synthetic(tmp_path / "root", "texture", 0, image_size=32)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in root.rglob("*") if path.is_file()}
    assert generate_synthetic(root, "texture", 0, image_size=32) == root
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in root.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["root"]  # no staging folder left beside it


def test_a_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
    def broken_painter(rng, size):
        raise RuntimeError("painter crashed")

    monkeypatch.setitem(synthetic.PAINTERS, "planks", broken_painter)  # fails after weave was written
    with pytest.raises(RuntimeError, match="painter crashed"):
        generate_synthetic(tmp_path / "root", "texture", 0, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_a_root_generated_with_other_settings_is_refused(tmp_path):
    root = generate_synthetic(tmp_path / "root", "texture", 0, image_size=32)
    with pytest.raises(DataError, match="image_size 32"):
        generate_synthetic(root, "texture", 0, image_size=64)


def test_a_foreign_folder_is_not_mistaken_for_a_dataset(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match=f"root.*no {MANIFEST}"):
        generate_synthetic(tmp_path / "root", "texture", 0)


def test_unknown_domain_and_category_are_named(tmp_path):
    with pytest.raises(DataError, match="'marble'.*texture, object"):
        generate_synthetic(tmp_path / "root", "marble", 0)
    with pytest.raises(DataError, match="gravel.*weave, granite, planks"):
        generate_synthetic(tmp_path / "root", "texture", 0, categories=["gravel"])


@pytest.mark.parametrize("domain", sorted(SYNTHETIC_DOMAINS))
def test_each_domain_has_every_defect_type(domain):
    items = plan_items(list(SYNTHETIC_DOMAINS[domain]), normal_per_class=0, anomalous_per_class=6)
    assert {item.defect for item in items} == set(DEFECT_TYPES)


@pytest.mark.parametrize("class_name", [name for domain in SYNTHETIC_DOMAINS.values() for name in domain])
def test_defects_change_exactly_their_mask_and_are_visible(class_name):
    domain = next(domain for domain, classes in SYNTHETIC_DOMAINS.items() if class_name in classes)
    for item in plan_items([class_name], normal_per_class=0, anomalous_per_class=6):
        image, mask = render(domain, 0, item, 64)
        # Re-render the same scene without the defect: the generator is consumed in the same order up to it.
        rng = np.random.default_rng(
            stable_seed("synthetic", domain, 0, item.class_name, item.split, item.defect, item.index))
        clean = synthetic.PAINTERS[class_name](rng, 64).image
        difference = np.abs(image.astype(np.float32) - clean).mean(axis=-1)
        region = mask > 0
        assert 0 < region.mean() < 0.1
        assert difference[region].mean() > 20, f"{item.defect} on {class_name} is barely visible"
        assert difference[~region].mean() < 4  # only sensor noise outside the mask


def test_normal_images_have_no_mask_and_differ_from_each_other():
    first, mask = render("object", 0, Item("disc", "test", None, 0), 32)
    second, _ = render("object", 0, Item("disc", "test", None, 1), 32)
    assert mask is None and first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, second)


def test_masks_are_binary_pngs(make_synthetic):
    root = make_synthetic()
    for path in root.rglob("*_mask.png"):
        with Image.open(path) as mask:
            assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
