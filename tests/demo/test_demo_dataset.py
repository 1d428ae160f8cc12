import json
import logging
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")

from patchguard.demo import dataset as dd  # noqa: E402
from patchguard.demo import defects  # noqa: E402

SMALL = dict(image_size=64, n_train=4, n_test_good=2, n_test_per_defect=2)


def _png(path):
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    assert dd.build_demo_dataset(root, **SMALL) == root
    return root


def test_constants():
    assert dd.DEMO_CLASSES == ("brick", "grass", "gravel", "washer")
    assert dd.DEFECT_TYPES == ("scratch", "hole", "stain", "crack", "foreign")


def test_the_demo_data_reads_as_a_data_set_of_its_own_without_warnings(small_root, caplog,
                                                                       monkeypatch):
    from patchguard.data.layouts import classes, load_records

    monkeypatch.setattr(classes, "_warned", set())  # each unknown class is warned once a session

    with caplog.at_level(logging.WARNING, logger="patchguard"):
        counts = {cls: (len(load_records("demo", small_root, cls, "train")),
                        len(load_records("demo", small_root, cls, "test")))
                  for cls in dd.DEMO_CLASSES}
    assert [r.getMessage() for r in caplog.records] == []
    assert counts == {cls: (4, 2 + 2 * len(dd.DEFECT_TYPES)) for cls in dd.DEMO_CLASSES}
    # Read as MVTec AD, the same folders are classes MVTec AD does not have: warned, once.
    with caplog.at_level(logging.WARNING, logger="patchguard"):
        load_records("mvtec", small_root, "grass", "train")
    assert "class 'grass' is not one of the mvtec classes" in caplog.text


def test_layout_and_counts(small_root):
    for cls in dd.DEMO_CLASSES:
        c = small_root / cls
        assert sorted(p.name for p in (c / "train" / "good").iterdir()) == [
            f"{i:03d}.png" for i in range(4)
        ]
        assert sorted(p.name for p in (c / "test").iterdir()) == sorted(["good", *dd.DEFECT_TYPES])
        assert len(list((c / "test" / "good").glob("*.png"))) == 2
        assert sorted(p.name for p in (c / "ground_truth").iterdir()) == sorted(dd.DEFECT_TYPES)
        for d in dd.DEFECT_TYPES:
            imgs = sorted(p.name for p in (c / "test" / d).iterdir())
            masks = sorted(p.name for p in (c / "ground_truth" / d).iterdir())
            assert imgs == ["000.png", "001.png"]
            assert masks == ["000_mask.png", "001_mask.png"]
        im = Image.open(c / "train" / "good" / "000.png")
        assert im.mode == "RGB" and im.size == (64, 64)
    # no leftover temp dirs from the atomic build
    assert not [p for p in small_root.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_masks_binary_nonempty_and_sized(small_root):
    for cls in dd.DEMO_CLASSES:
        for d in dd.DEFECT_TYPES:
            for i in range(2):
                im = Image.open(small_root / cls / "ground_truth" / d / f"{i:03d}_mask.png")
                assert im.mode == "L"
                m = np.array(im)
                img = _png(small_root / cls / "test" / d / f"{i:03d}.png")
                assert m.shape == img.shape[:2]
                assert set(np.unique(m)) == {0, 255}


def test_foreground_masks_only_for_object(small_root):
    for cls in dd.TEXTURE_CLASSES:
        assert not (small_root / cls / "train" / "foreground_mask").exists()
    c = small_root / dd.OBJECT_CLASS
    fg_names = sorted(p.name for p in (c / "train" / "foreground_mask").iterdir())
    assert fg_names == sorted(p.name for p in (c / "train" / "good").iterdir())
    for name in fg_names:
        im = Image.open(c / "train" / "foreground_mask" / name)
        assert im.mode == "L"
        fg = np.array(im)
        assert set(np.unique(fg)) == {0, 255}
        assert 0.1 < (fg > 0).mean() < 0.5  # a ring, not the whole frame
        img = _png(c / "train" / "good" / name)
        # object pixels are brighter metal than the table on average
        assert img[fg > 0].mean() > img[fg == 0].mean()


def test_object_defects_lie_on_object():
    rng = np.random.default_rng(5)
    for d in dd.DEFECT_TYPES:
        for _ in range(3):
            img, fg = dd._render_washer(96, rng)
            out, mask = dd.add_defect(img, d, rng, fg)
            assert mask.any() and not (mask & ~fg).any()
            changed = np.abs(out.astype(int) - img).max(axis=2) > 0
            assert not (changed & ~fg).any()


@pytest.mark.parametrize("defect_type", dd.DEFECT_TYPES)
def test_add_defect_changes_only_inside_mask(defect_type):
    rng = np.random.default_rng(11)
    for size in (64, 224):
        for cls in ("gravel", "brick"):
            img, _ = dd._texture_crop(cls, "test", size, rng)
            before = img.copy()
            out, mask = dd.add_defect(img, defect_type, rng)
            assert np.array_equal(img, before)  # input untouched
            assert out.dtype == np.uint8 and out.shape == img.shape
            assert mask.dtype == bool and mask.shape == img.shape[:2] and mask.any()
            diff = np.abs(out.astype(int) - img).max(axis=2)
            near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert not (diff[~near] > 0).any()
            # every visibly changed pixel is in the mask, and the mask is mostly real change
            assert not (diff[~mask] > defects._VISIBLE_DIFF).any()
            assert (diff[mask] > defects._VISIBLE_DIFF).mean() > 0.6


@pytest.mark.parametrize("defect_type", dd.DEFECT_TYPES)
def test_defect_area_at_224(defect_type):
    lo, hi = defects.DEFECT_AREA_RANGE
    assert (lo, hi) == (0.005, 0.05)
    fracs = []
    for i in range(4):
        rng = np.random.default_rng([42, i])
        img, _ = dd._texture_crop(dd.TEXTURE_CLASSES[i % 3], "test", 224, rng)
        fracs.append(dd.add_defect(img, defect_type, rng)[1].mean())
        img, fg = dd._render_washer(224, rng)
        fracs.append(dd.add_defect(img, defect_type, rng, fg)[1].mean())
    assert all(lo <= f <= hi for f in fracs), fracs


def test_add_defect_rejects_bad_input():
    img = np.zeros((64, 64, 3), np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        dd.add_defect(img, "smudge", rng)
    with pytest.raises(ValueError):
        dd.add_defect(img.astype(np.float32), "hole", rng)
    with pytest.raises(ValueError):
        dd.add_defect(img, "hole", rng, np.zeros((64, 64), bool))


def _intersects(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_train_and_test_crops_are_disjoint(small_root):
    for cls in dd.TEXTURE_CLASSES:
        marker = json.loads((small_root / cls / dd.MARKER_NAME).read_text())
        crops = marker["crops"]
        train = [b for k, b in crops.items() if k.startswith("train/")]
        test = [b for k, b in crops.items() if k.startswith("test/")]
        assert len(train) == 4 and len(test) == 2 + 2 * len(dd.DEFECT_TYPES)
        shape = dd._texture_source(cls).shape[:2]
        for split, boxes in (("train", train), ("test", test)):
            regions = dd.texture_regions(shape, split)
            for b in boxes:
                assert any(
                    r[0] <= b[0] and r[1] <= b[1] and b[2] <= r[2] and b[3] <= r[3]
                    for r in regions
                )
        assert not any(_intersects(a, b) for a in train for b in test)
        # the split regions themselves never touch
        assert not any(
            _intersects(a, b)
            for a in dd.texture_regions(shape, "train")
            for b in dd.texture_regions(shape, "test")
        )
        train_imgs = [_png(p) for p in (small_root / cls / "train" / "good").iterdir()]
        for p in (small_root / cls / "test").rglob("*.png"):
            t = _png(p)
            assert not any(np.array_equal(t, tr) for tr in train_imgs)


def _tree_bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_determinism(tmp_path):
    kw = dict(SMALL, classes=["gravel", "washer"])
    a = _tree_bytes(dd.build_demo_dataset(tmp_path / "a", seed=3, **kw))
    b = _tree_bytes(dd.build_demo_dataset(tmp_path / "b", seed=3, **kw))
    c = _tree_bytes(dd.build_demo_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) > 0.9 * len(pngs)


def test_idempotent_and_rebuild(tmp_path):
    root = tmp_path / "d"
    kw = dict(SMALL, classes=["brick", "washer"])
    dd.build_demo_dataset(root, **kw)
    files = [p for p in root.rglob("*") if p.is_file()]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    inodes = {p: p.stat().st_ino for p in files}
    dd.build_demo_dataset(root, **kw)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == sorted(files)
    assert all(p.stat().st_mtime_ns == stamps[p] and p.stat().st_ino == inodes[p] for p in files)
    # different parameters rebuild the class and replace stale files
    dd.build_demo_dataset(root, **dict(kw, n_train=2))
    assert len(list((root / "brick" / "train" / "good").iterdir())) == 2
    assert len(list((root / "washer" / "train" / "foreground_mask").iterdir())) == 2
    # overwrite=True rebuilds even when the parameters match
    before = (root / "brick" / dd.MARKER_NAME).stat().st_ino
    dd.build_demo_dataset(root, overwrite=True, **dict(kw, n_train=2))
    assert (root / "brick" / dd.MARKER_NAME).stat().st_ino != before


def test_interrupted_build_leaves_no_class(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dd, "add_defect", boom)
    root = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        dd.build_demo_dataset(root, classes=["gravel"], **SMALL)
    assert list(root.iterdir()) == []


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        dd.build_demo_dataset(tmp_path, classes=["carpet"])
    with pytest.raises(ValueError):
        dd.build_demo_dataset(tmp_path, n_train=0)


def test_missing_skimage_message(monkeypatch):
    dd._texture_source.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    try:
        with pytest.raises(ImportError, match=r'pip install "patchguard\[demo\]"'):
            dd._texture_source("brick")
    finally:
        dd._texture_source.cache_clear()
