"""``predict``: thresholds, inputs, the files it writes.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from .common import (
    CLASS,
    EPS,
    assert_names_key,
    assert_refused,
    bomb_png,
    watch_eps_decoder,
)


def test_decompression_bomb_in_predict_is_reported(cli, tmp_path, finished_run):
    # D-bomb-predict; passed before the fixes too (skipped input, exit code 1)
    bomb = bomb_png(tmp_path / "bomb.png")
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input", bomb,
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet")
    assert_refused(result, "bomb.png", code=1)


# ============================================================================ predict


def test_predict_threshold_nan_is_refused(cli, calibrated, data, tmp_path):
    # P-thr-nan. Before the fixes: every image is called normal.
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet",
                 "--threshold", "nan")
    assert_refused(result, "nan")
    assert_names_key(result, "threshold")


def test_predict_pixel_threshold_nan_is_refused(cli, calibrated, data, tmp_path):
    # P-pix-nan. Before the fixes: empty masks and a numpy cast warning.
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet",
                 "--save-masks", "--pixel-threshold", "nan")
    assert_refused(result, "nan")
    assert_names_key(result, "pixel_threshold")


@pytest.mark.parametrize("key,flags,value,code", [
    ("batch_size", ["--batch-size", "0"], "0", 2),  # before the fixes: "must be at least 1"
    ("device", ["--device", "foo"], "foo", 2),  # before the fixes: RuntimeError traceback
], ids=["P-bs-0", "P-device-foo"])
def test_predict_bad_flag(cli, finished_run, data, tmp_path, key, flags, value, code):
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input",
                 data / CLASS / "test", "--output-dir", tmp_path / "pred", "--quiet", *flags)
    assert_refused(result, value, code=code)
    assert_names_key(result, key)


def test_predict_missing_input_is_reported(cli, finished_run, tmp_path):
    # P-input-missing; passed before the fixes too
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input",
                 tmp_path / "nope.png", "--output-dir", tmp_path / "pred", "--device", "cpu",
                 "--quiet")
    assert_refused(result, "nope.png", code=1)


def test_predict_rerun_leaves_no_stale_heatmaps(cli, finished_run, data, tmp_path):
    # P-rerun-stale. Before the fixes: the second, smaller run leaves the first run's heatmaps.
    out = tmp_path / "pred"
    base = ["predict", "--checkpoint", finished_run / "last.pt", "--output-dir", out,
            "--device", "cpu", "--quiet"]
    assert cli(*base, "--input", data / CLASS / "test").code == 0
    second = cli(*base, "--input", data / CLASS / "test" / "good" / "000.png")
    if second.code == 2:  # refusing a non-empty output folder is fine too
        assert "Traceback" not in second.text
        return
    assert second.code == 0, second
    assert len(list((out / "heatmaps").glob("*.png"))) == 1


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_decided_predict_threshold_must_be_finite(cli, calibrated, data, tmp_path, value):
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", f"--threshold={value}", "--quiet")
    assert_refused(result, value)
    assert_names_key(result, "threshold")
    assert not (tmp_path / "pred").exists()


# ============================================================================ past failures


def test_predict_never_hands_an_eps_named_png_to_its_decoder(cli, tmp_path, finished_run,
                                                            monkeypatch):
    # Formerly (security): an EPS file named .png reached PIL's EPS plugin, i.e. Ghostscript.
    calls = watch_eps_decoder(monkeypatch)
    fake = tmp_path / "photo.png"
    fake.write_bytes(EPS)
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input", fake,
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet")
    assert_refused(result, "photo.png", "EPS", "PNG", code=1)
    assert calls == []


def test_predict_keeps_files_it_did_not_write(cli, tmp_path, finished_run, data):
    # Formerly (loss): every heatmaps/NNNNN_*.png and masks/NNNNN_*.png in --output-dir was
    # deleted, even without --save-masks.
    out = tmp_path / "pred"
    mine = {out / "heatmaps" / "00000_holiday.png": b"my photo",
            out / "masks" / "00007_drawing.png": b"my drawing",
            out / "predictions.csv": b"my table"}
    for path, content in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    def argv(folder):
        return ["predict", "--checkpoint", finished_run / "last.pt", "--output-dir", folder,
                "--device", "cpu", "--quiet", "--input"]

    result = cli(*argv(out), data / CLASS / "test" / "good")
    assert_refused(result, "--output-dir", "did not write", "--overwrite")
    assert all(path.read_bytes() == content for path, content in mine.items())
    # A folder of its own outputs: a rerun replaces them, and removes the stale ones only.
    own = tmp_path / "own"
    assert cli(*argv(own), data / CLASS / "test" / "good").code == 0
    (own / "heatmaps" / "00009_user.png").write_bytes(b"added by the user")
    assert cli(*argv(own), data / CLASS / "test" / "good" / "000.png").code == 0
    names = sorted(p.name for p in (own / "heatmaps").glob("*.png"))
    assert names == ["00000_000.png", "00009_user.png"], names


def test_predict_overwrite_replaces_on_purpose(cli, tmp_path, finished_run, data):
    out = tmp_path / "pred"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "00000_000.png").write_bytes(b"old")
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--output-dir", out,
                 "--device", "cpu", "--quiet", "--overwrite", "--input",
                 data / CLASS / "test" / "good" / "000.png")
    assert result.code == 0, result
    assert (out / "heatmaps" / "00000_000.png").read_bytes() != b"old"


def test_predict_output_dir_inside_an_input_folder_is_refused(cli, tmp_path, finished_run,
                                                              data):
    # Formerly: the next run would predict on the heatmaps written into the input folder.
    images = tmp_path / "images"
    shutil.copytree(data / CLASS / "test" / "good", images)
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input", images,
                 "--output-dir", images / "pred", "--device", "cpu", "--quiet")
    assert_refused(result, "--output-dir", "inside")
    assert not (images / "pred").exists()


@pytest.mark.parametrize("size", [(1, 1), (4000, 50)], ids=["1x1", "4000x50"])
def test_predict_warns_about_extreme_image_sizes(cli, tmp_path, finished_run, size):
    # Formerly (silent): a 1x1 or 10000x50 image was resized to the model's size without a word.
    path = tmp_path / "odd.png"
    Image.new("RGB", size, (90, 90, 90)).save(path)
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input", path,
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet")
    assert result.code == 0, result
    assert "odd.png" in result.text and f"{size[0]}x{size[1]}" in result.text, result


@pytest.mark.parametrize("value", [float("nan"), "abc", float("inf")])
def test_api_predict_checks_the_threshold_as_the_flag(finished_run, data, value):
    # Formerly: threshold=nan made every decision False; 'abc' was a bare ValueError.
    import patchguard
    from patchguard.utils.checks import InputError

    detector = patchguard.load(finished_run / "last.pt", "cpu")
    image = data / CLASS / "test" / "good" / "000.png"
    with pytest.raises(InputError, match=r"threshold \(--threshold\) = .*finite number"):
        detector.predict(image, threshold=value)
    with pytest.raises(InputError, match="pixel_threshold"):
        detector.predict(image, pixel_threshold=value)


def test_api_model_predict_refuses_0_255_tensors(finished_run):
    # Formerly: model.predict scored 0..255 tensors as if they were images in [0, 1].
    import patchguard

    model, _ = patchguard.load_model(finished_run / "last.pt")
    with pytest.raises(ValueError, match=r"\[0, 1\].*divide 0\.\.255 pixels by 255"):
        model.predict(torch.full((1, 3, 64, 64), 200.0))
    scores, maps = model.predict(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(scores).all() and maps.shape == (1, 64, 64)
