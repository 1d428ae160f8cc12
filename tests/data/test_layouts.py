import argparse
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from patchguard.cli import data as cli_data
from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import (
    KNOWN_CLASSES,
    LAYOUTS,
    discover_classes,
    inspect_layout,
    known_classes,
    load_records,
)
from patchguard.data.records import DatasetError

from helpers.data import make_mvtec_class

SIZE = 16


def _img(path, size=SIZE, value=None, mask=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if mask:
        array = np.zeros((size, size), np.uint8)
        array[4:9, 4:9] = 255
    else:
        array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _run_data(argv):
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb", required=True)
    cli_data.register(verbs)
    args = parser.parse_args(argv)
    return cli_data.COMMANDS[args.verb](args)


def _by_name(records):
    return {(r.defect_type, r.path.name): r for r in records}


def test_every_layout_registered_and_classes_known():
    for name in ("mvtec", "visa", "visa-patchguard", "mpdd", "btad", "dtd", "wfdd",
                 "brats2021", "headct", "folder"):
        assert name in LAYOUTS
    counts = {"mvtec": 15, "visa": 12, "mpdd": 6, "btad": 3, "dtd": 12, "wfdd": 4}
    for name, count in counts.items():
        assert len(known_classes(name)) == count == len(set(KNOWN_CLASSES[name]))
    assert known_classes("btad") == ["01", "02", "03"]
    assert len(known_classes("brats2021")) == len(known_classes("headct")) == 1
    with pytest.raises(DatasetError):
        known_classes("nope")


@pytest.mark.parametrize("dataset", ["mvtec", "mpdd", "dtd", "wfdd", "headct"])
def test_mvtec_like_layouts(tmp_path, dataset):
    root = tmp_path / "test" / "data"  # a parent named test must not confuse mask lookup
    make_mvtec_class(root, n_train=3, n_good=1, n_bad=2, size=SIZE)
    train = load_records(dataset, root, "widget", "train")
    test = load_records(dataset, root, "widget", "test")
    assert len(train) == 3 and all(r.label == 0 and r.foreground_path for r in train)
    assert sorted(r.label for r in test) == [0, 1, 1]
    for record in test:
        if record.label:
            assert record.mask_path == root / "widget/ground_truth/spot" / (
                record.path.stem + "_mask.png")
        else:
            assert record.mask_path is None and record.defect_type == "good"


def test_data_set_without_any_masks(tmp_path):
    make_mvtec_class(tmp_path, n_train=2, n_good=1, n_bad=2, size=SIZE, masks=False,
                     foreground=False)
    test = load_records("wfdd", tmp_path, "widget", "test")
    assert [r.mask_path for r in test] == [None] * 3
    assert all(r.foreground_path is None for r in load_records("dtd", tmp_path, "widget", "train"))
    assert not TestDataset(test, SIZE).has_pixel_masks
    report = inspect_layout("wfdd", tmp_path, "widget")
    assert report["problems"] == [] and report["anomalous_without_mask"] == 2


def test_btad_bmp_images_png_masks(tmp_path):
    root = tmp_path / "test"
    cls = root / "01"
    for i in range(3):
        _img(cls / f"train/ok/{i:04d}.bmp")
        _img(cls / f"train/foreground_mask/{i:04d}.png", mask=True)
    _img(cls / "test/ok/0000.bmp")
    for i in range(2):
        _img(cls / f"test/ko/{i:04d}.bmp")
        _img(cls / f"ground_truth/ko/{i:04d}.png", mask=True)
    train = load_records("btad", root, "01", "train")
    assert len(train) == 3 and all(r.foreground_path.suffix == ".png" for r in train)
    test = _by_name(load_records("btad", root, "01", "test"))
    assert test[("good", "0000.bmp")].label == 0
    for i in range(2):
        record = test[("ko", f"{i:04d}.bmp")]
        assert record.label == 1
        assert record.mask_path == cls / f"ground_truth/ko/{i:04d}.png"


def _visa_tree(root, with_csv=True):
    cls = root / "candle"
    for i in range(4):
        _img(cls / f"Data/Images/Normal/{i:04d}.JPG")
    for i in range(2):
        _img(cls / f"Data/Images/foreground_mask/{i:04d}.png", mask=True)
    for i in range(2):
        _img(cls / f"Data/Images/Anomaly/{i:03d}.JPG")
        _img(cls / f"Data/Masks/Anomaly/{i:03d}.png", mask=True)
    if with_csv:
        rows = ["object,split,label,image,mask"]
        for i, split in enumerate(["train", "test", "train", "test"]):
            rows.append(f"candle,{split},normal,candle/Data/Images/Normal/{i:04d}.JPG,")
        for i in range(2):
            rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,"
                        f"candle/Data/Masks/Anomaly/{i:03d}.png")
        rows.append("cashew,train,normal,cashew/Data/Images/Normal/0000.JPG,")
        (root / "split_csv").mkdir(parents=True)
        (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return cls


def test_visa_official_and_patchguard_splits(tmp_path):
    root = tmp_path / "test" / "visa"
    cls = _visa_tree(root)
    train = load_records("visa", root, "candle", "train")
    assert [r.path.name for r in train] == ["0000.JPG", "0002.JPG"]
    assert train[0].foreground_path.name == "0000.png" and train[1].foreground_path is None
    test = _by_name(load_records("visa", root, "candle", "test"))
    assert len(test) == 4
    assert test[("good", "0001.JPG")].label == 0
    for i in range(2):
        record = test[("anomaly", f"{i:03d}.JPG")]
        assert record.label == 1 and record.mask_path == cls / f"Data/Masks/Anomaly/{i:03d}.png"

    train = load_records("visa-patchguard", root, "candle", "train")
    assert [r.path.name for r in train] == ["0000.JPG", "0001.JPG"]
    assert all(r.foreground_path is not None for r in train)
    test = load_records("visa-patchguard", root, "candle", "test")
    assert sorted(r.path.name for r in test if not r.label) == ["0002.JPG", "0003.JPG"]
    assert {r.path.stem: r.mask_path.stem for r in test if r.label} == {"000": "000", "001": "001"}


def test_visa_without_csv(tmp_path):
    _visa_tree(tmp_path, with_csv=False)
    train = load_records("visa", tmp_path, "candle", "train")  # falls back to the mask split
    assert [r.path.name for r in train] == ["0000.JPG", "0001.JPG"]
    for fg in (tmp_path / "candle/Data/Images/foreground_mask").iterdir():
        fg.unlink()
    with pytest.raises(DatasetError, match="1cls.csv"):
        load_records("visa", tmp_path, "candle", "train")


@pytest.mark.parametrize("typed_gt", [True, False])
def test_brats_flair_seg_pairing(tmp_path, typed_gt):
    root = tmp_path / "flair" / "test"  # "flair" in the path must not be rewritten
    cls = root / "brats2021"
    for i in range(2):
        _img(cls / f"train/normal/BraTS2021_{i:05d}_flair_60.png")
        _img(cls / f"train/foreground_mask/BraTS2021_{i:05d}_flair_60.png", mask=True)
    _img(cls / "test/normal/BraTS2021_00009_flair_60.png")
    gt = cls / ("ground_truth/tumor" if typed_gt else "ground_truth")
    for i in range(2):
        _img(cls / f"test/tumor/BraTS2021_{i:05d}_flair_70.png")
        _img(gt / f"BraTS2021_{i:05d}_seg_70.png", mask=True)
    train = load_records("brats2021", root, "brats2021", "train")
    assert len(train) == 2 and all(r.foreground_path for r in train)
    test = load_records("brats2021", root, "brats2021", "test")
    assert sorted(r.label for r in test) == [0, 1, 1]
    for record in test:
        if record.label:
            assert record.mask_path == gt / record.path.name.replace("flair", "seg")
    # root may also be the class folder itself for single-class data sets
    assert len(load_records("brats2021", cls, "brats2021", "train")) == 2


def test_folder_layout(tmp_path):
    root = tmp_path / "test"
    cls = root / "parts"
    for i in range(3):
        _img(cls / f"train/n{i}.png")
    _img(cls / "foreground/n0.png", mask=True)
    _img(cls / "test/good/g0.png")
    _img(cls / "test/scratch/s0.png")
    _img(cls / "test/scratch/s1.jpg")
    _img(cls / "test/dent/d0.png")
    _img(cls / "masks/s0_mask.png", mask=True)
    _img(cls / "masks/s1.bmp", mask=True)
    _img(cls / "masks/dent/d0.png", mask=True)
    train = {r.path.name: r for r in load_records("folder", root, "parts", "train")}
    assert sorted(train) == ["n0.png", "n1.png", "n2.png"]
    assert train["n0.png"].foreground_path == cls / "foreground/n0.png"
    assert train["n1.png"].foreground_path is None
    test = _by_name(load_records("folder", root, "parts", "test"))
    assert test[("good", "g0.png")].label == 0
    assert test[("scratch", "s0.png")].mask_path == cls / "masks/s0_mask.png"
    assert test[("scratch", "s1.jpg")].mask_path == cls / "masks/s1.bmp"
    assert test[("dent", "d0.png")].mask_path == cls / "masks/dent/d0.png"
    assert discover_classes(root) == ["parts"]


def test_folder_without_masks_or_normal_test_images(tmp_path):
    cls = tmp_path / "mine"
    _img(cls / "good/a.png")
    _img(cls / "test/bad/b.png")
    assert len(load_records("folder", tmp_path, "mine", "train")) == 1
    (record,) = load_records("folder", tmp_path, "mine", "test")
    assert record.label == 1 and record.mask_path is None


def test_broken_layout_refused_with_the_report_message(tmp_path):
    make_mvtec_class(tmp_path, n_train=2, n_good=1, n_bad=3, size=SIZE)
    (tmp_path / "widget/ground_truth/spot/001_mask.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        tmp_path / "widget/ground_truth/spot/002_mask.png")
    (tmp_path / "widget/test/good/broken.png").write_bytes(b"\x89PNG truncated")
    report = inspect_layout("mpdd", tmp_path, "widget")
    assert len(report["problems"]) == 3
    joined = "\n".join(report["problems"])
    assert "001.png has no mask" in joined and "002_mask.png is 8x8" in joined
    assert "broken.png" in joined
    with pytest.raises(DatasetError) as error:
        load_records("mpdd", tmp_path, "widget", "test")
    for problem in report["problems"]:
        assert problem in str(error.value)
    assert len(load_records("mpdd", tmp_path, "widget", "train")) == 2  # train split is fine


def test_empty_class_is_a_problem(tmp_path):
    (tmp_path / "hollow/train").mkdir(parents=True)
    (tmp_path / "hollow/test/good").mkdir(parents=True)
    report = inspect_layout("folder", tmp_path, "hollow")
    assert any("no training images" in p for p in report["problems"])
    assert any("no test images" in p for p in report["problems"])
    with pytest.raises(DatasetError, match="no training images"):
        load_records("folder", tmp_path, "hollow", "train")


def test_unknown_class_accepted_with_a_warning(tmp_path, caplog):
    make_mvtec_class(tmp_path, name="gizmo_x", n_train=2, n_good=1, n_bad=1, size=SIZE)
    with caplog.at_level(logging.WARNING):
        assert len(load_records("mpdd", tmp_path, "gizmo_x", "train")) == 2
    assert "gizmo_x" in caplog.text


def test_data_info_cli(tmp_path, capsys):
    make_mvtec_class(tmp_path, name="alpha", n_train=2, n_good=1, n_bad=2, size=SIZE)
    make_mvtec_class(tmp_path, name="beta", n_train=2, n_good=1, n_bad=2, size=SIZE)
    assert _run_data(["data", "info", "--dataset", "mvtec", "--dataset-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "beta" in out and "16x16" in out and "spot (2)" in out
    (tmp_path / "beta/ground_truth/spot/001_mask.png").unlink()
    assert _run_data(["data", "info", "--dataset_dir", str(tmp_path), "--class-name", "beta"]) == 1
    out = capsys.readouterr().out
    assert "001.png has no mask" in out and "alpha" not in out


def test_download_and_foreground_report_a_missing_module(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "patchguard.data.download", None)
    monkeypatch.setitem(sys.modules, "patchguard.data.foreground", None)
    assert _run_data(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path)]) == 2
    assert _run_data(["data", "foreground", "--dataset-dir", str(tmp_path),
                      "--class-name", "x", "--method", "full"]) == 2
    assert "not available" in capsys.readouterr().out
