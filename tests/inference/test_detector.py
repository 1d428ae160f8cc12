"""Inference API, thresholds, model card, and the predict / calibrate / info verbs."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchguard.cli.tools import COMMANDS, register
from patchguard.data.datasets import to_tensor
from patchguard.data.images import read_image, resize_image
from patchguard.inference.card import model_card
from patchguard.inference.detector import Detector, load
from patchguard.inference.thresholds import calibrate_thresholds, write_thresholds
from patchguard.models.factory import load_model
from patchguard.training.trainer import train
from patchguard.utils.checkpoint import load_checkpoint

from helpers.data import make_mvtec_class
from helpers.models import tiny_config


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="patchguard")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return COMMANDS[args.verb](args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, class folder) of a tiny trained model."""
    root = tmp_path_factory.mktemp("inference_data")
    cls = make_mvtec_class(root)
    last = train(tiny_config(root, tmp_path_factory.mktemp("inference_run")), progress=False)
    return last, cls


@pytest.fixture()
def checkpoint(trained, tmp_path) -> Path:
    """A private copy of the trained checkpoint (tests rewrite thresholds into it)."""
    copy = tmp_path / "model.pt"
    shutil.copy(trained[0], copy)
    return copy


@pytest.fixture()
def folder_with_corrupt(trained, tmp_path) -> Path:
    """Test images in nested folders, one truncated PNG, one text file named .jpg."""
    folder = tmp_path / "line"
    shutil.copytree(trained[1] / "test", folder)
    data = (folder / "good/000.png").read_bytes()
    (folder / "spot/truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "good/notes.jpg").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_folder_reports_corrupt_files(checkpoint, folder_with_corrupt):
    detector = load(checkpoint, device="cpu")
    result = detector.predict(folder_with_corrupt, batch_size=3)
    failed = {Path(path).name for path, _ in result.failed}
    assert failed == {"truncated.png", "notes.jpg"}
    assert all(reason for _, reason in result.failed)
    assert len(result.paths) == 8 and result.scores.shape == (8,)
    assert result.maps.shape == (8, 64, 64) and result.maps.dtype == np.float32
    assert result.decisions is None  # no threshold in a fresh checkpoint
    assert np.all(np.isfinite(result.scores))


def test_predict_matches_model_and_accepts_every_input_kind(checkpoint, trained):
    detector = load(checkpoint, device="cpu")
    files = sorted((trained[1] / "test/spot").glob("*.png"))
    model, _ = load_model(checkpoint)
    batch = torch.stack([to_tensor(resize_image(read_image(f), 64)) for f in files])
    scores, maps = model.predict(batch)

    by_path = detector.predict(files, batch_size=2)
    assert by_path.paths == [str(f) for f in files]
    np.testing.assert_allclose(by_path.scores, scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(by_path.maps, maps.numpy(), atol=1e-5)

    by_glob = detector.predict(str(trained[1] / "test/spot/*.png"))
    np.testing.assert_allclose(by_glob.scores, by_path.scores, atol=1e-6)
    pil = [Image.open(f) for f in files]
    uint8 = [read_image(f) for f in files]
    as_float = [a.astype(np.float32) / 255 for a in uint8]
    # Float images are resized in float (no 8-bit rounding first): close, not identical.
    for inputs, tolerance in ((pil, 1e-5), (uint8, 1e-5), (batch, 1e-5), (as_float, 5e-3)):
        other = detector.predict(inputs)
        np.testing.assert_allclose(other.scores, by_path.scores, atol=tolerance)
        assert other.paths[0].startswith("<") and not other.failed


def test_bad_in_memory_input_and_missing_path_are_reported(checkpoint, tmp_path):
    detector = load(checkpoint, device="cpu")
    result = detector.predict([np.zeros((5, 5, 7)), str(tmp_path / "missing.png"),
                               str(tmp_path / "*.bmp"), np.full((64, 64, 3), 2.0)])
    assert len(result.failed) == 4 and len(result.paths) == 0
    assert result.scores.shape == (0,) and result.maps.shape == (0, 64, 64)


def test_calibration_hits_target_fpr():
    rng = np.random.default_rng(0)
    normal = rng.normal(0.0, 1.0, 20_000)
    for target in (0.01, 0.05, 0.1):
        thresholds = calibrate_thresholds(normal, target_fpr=target)
        fpr = np.mean(normal >= thresholds["image"])
        assert target - 1 / normal.size <= fpr <= target
        fresh = rng.normal(0.0, 1.0, 200_000)
        assert abs(np.mean(fresh >= thresholds["image"]) - target) < 0.15 * target
        assert thresholds["method"] == "normal-quantile" and thresholds["target_fpr"] == target
    # Ties straddling the cut never push the rate over the target.
    tied = np.r_[np.zeros(95), np.ones(5)]
    assert np.mean(tied >= calibrate_thresholds(tied, 0.02)["image"]) <= 0.02
    # Fewer samples than 1/target: above every normal score, also when NumPy compares float32
    # scores with the threshold in float32.
    small = rng.normal(size=20).astype(np.float32)
    assert not np.any(small >= calibrate_thresholds(small, 0.01)["image"])
    scores32 = normal.astype(np.float32)
    assert np.mean(scores32 >= calibrate_thresholds(scores32, 0.01)["image"]) <= 0.01
    # Pixels: the same rule per pixel.
    pixels = rng.normal(size=(10, 32, 32))
    pixel = calibrate_thresholds(normal, 0.05, normal_pixel_values=pixels)["pixel"]
    assert 0.05 - 1 / pixels.size <= np.mean(pixels >= pixel) <= 0.05


def test_calibration_f1_with_labelled_anomalies():
    rng = np.random.default_rng(1)
    normal, anomalous = rng.normal(0, 1, 500), rng.normal(6, 1, 50)
    separable = calibrate_thresholds(normal, labelled=anomalous)
    assert separable["method"] == "f1" and separable["f1"] == pytest.approx(1.0)
    assert normal.max() < separable["image"] <= anomalous.min()
    # Overlapping classes: the threshold is the best of all cuts.
    anomalous = rng.normal(1.5, 1, 100)
    thresholds = calibrate_thresholds(normal, labelled=anomalous)

    def f1(t: float) -> float:
        tp = np.sum(anomalous >= t)
        return 2 * tp / (np.sum(normal >= t) + tp + anomalous.size)

    best = max(f1(t) for t in np.r_[normal, anomalous])
    assert f1(thresholds["image"]) == pytest.approx(best)
    scores = np.r_[normal, anomalous]
    labels = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
    pair = calibrate_thresholds(normal[:1], labelled=(scores, labels))
    assert pair["n_anomalous"] == anomalous.size
    with pytest.raises(ValueError):
        calibrate_thresholds([])


def test_write_thresholds_keeps_every_key(checkpoint, trained):
    before = load_checkpoint(checkpoint)
    thresholds = calibrate_thresholds(np.linspace(-3, -1, 100), 0.05)
    write_thresholds(checkpoint, thresholds, normal_scores=np.linspace(-3, -1, 100))
    after = load_checkpoint(checkpoint)
    assert set(after) == set(before) | {"thresholds", "normal_scores"}
    for key in before["model"]:
        assert torch.equal(before["model"][key], after["model"][key])
    assert after["config"] == before["config"] and after["epoch"] == before["epoch"]
    assert after["thresholds"]["image"] == pytest.approx(thresholds["image"])
    assert after["normal_scores"].shape == (100,)
    detector = load(checkpoint, device="cpu")
    result = detector.predict(trained[1] / "test")
    np.testing.assert_array_equal(result.decisions, result.scores >= thresholds["image"])
    override = detector.predict(trained[1] / "test", threshold=1e9)
    assert not override.decisions.any()
    card = model_card(after)
    for text in ("test_vit", "image threshold", "normal-quantile", "widget", "0.1.0"):
        assert text in card


def test_cli_predict_matches_api_and_lists_failures(checkpoint, folder_with_corrupt, tmp_path,
                                                    capsys):
    out = tmp_path / "out"
    code = run_cli(["predict", "--checkpoint", str(checkpoint), "--input",
                    str(folder_with_corrupt), "--output-dir", str(out), "--batch_size", "3",
                    "--device", "cpu", "--quiet", "--threshold", "-2.2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "truncated.png" in err and "notes.jpg" in err
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    result = load(checkpoint, device="cpu").predict(folder_with_corrupt, threshold=-2.2)
    assert [row["path"] for row in rows] == result.paths
    np.testing.assert_allclose([float(row["score"]) for row in rows], result.scores, atol=1e-6)
    assert [row["decision"] == "anomalous" for row in rows] == list(result.decisions)
    for row in rows:
        assert (out / row["heatmap"]).is_file()
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["n_images"] == 8 and summary["n_failed"] == 2
    assert {Path(f["path"]).name for f in summary["failed"]} == {"truncated.png", "notes.jpg"}


def test_cli_calibrate_then_predict_with_masks_and_info(checkpoint, trained, tmp_path, capsys):
    cls = trained[1]
    code = run_cli(["calibrate", "--checkpoint", str(checkpoint), "--normal-dir",
                    str(cls / "train/good"), "--target-fpr", "0.1", "--device", "cpu",
                    "--quiet"])
    assert code == 0
    state = load_checkpoint(checkpoint)
    thresholds = state["thresholds"]
    assert thresholds["image"] is not None and thresholds["pixel"] is not None
    assert state["normal_scores"].shape == (8,)
    # Stored normal scores alone are enough to recalibrate (pixel threshold kept).
    assert run_cli(["calibrate", "--checkpoint", str(checkpoint), "--target-fpr", "0.2",
                    "--device", "cpu"]) == 0
    assert load_checkpoint(checkpoint)["thresholds"]["pixel"] == thresholds["pixel"]
    assert run_cli(["calibrate", "--checkpoint", str(checkpoint), "--normal-dir",
                    str(cls / "test/good"), "--anomalous-dir", str(cls / "test/spot"),
                    "--device", "cpu", "--quiet"]) == 0
    assert load_checkpoint(checkpoint)["thresholds"]["method"] == "f1"

    out = tmp_path / "pred"
    assert run_cli(["predict", "--checkpoint", str(checkpoint), "--input", str(cls / "test"),
                    "--output-dir", str(out), "--save-masks", "--device", "cpu",
                    "--quiet"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 8 and all(row["decision"] in ("normal", "anomalous") for row in rows)
    mask = np.asarray(Image.open(out / rows[0]["mask"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}

    capsys.readouterr()
    assert run_cli(["info", "--checkpoint", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "image threshold" in text and "f1" in text and "test_vit" in text
    assert run_cli(["info", "--checkpoint", str(checkpoint), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["thresholds"]["method"] == "f1" and "model" not in meta


def test_predict_masks_need_pixel_threshold(checkpoint, trained, tmp_path):
    with pytest.raises(ValueError, match="pixel threshold"):
        run_cli(["predict", "--checkpoint", str(checkpoint), "--input",
                 str(trained[1] / "test/good"), "--output-dir", str(tmp_path), "--save-masks",
                 "--device", "cpu", "--quiet"])
    detector = Detector(load_model(checkpoint)[0], {}, "cpu")
    with pytest.raises(ValueError, match="pixel threshold"):
        detector.predict(trained[1] / "test/good").masks()
