"""``predict``: thresholds, inputs, the files it writes.

Split from the former tests/cli/test_faults.py (issue #13, #24); helpers and fixtures in
helpers.py and conftest.py beside this file.
"""

from __future__ import annotations

import pytest

from .helpers import (
    CLASS,
    assert_names_key,
    assert_refused,
    bomb_png,
)


def test_decompression_bomb_in_predict_is_reported(cli, tmp_path, finished_run):
    # D-bomb-predict; passes on a0df06f (skipped input, exit code 1)
    bomb = bomb_png(tmp_path / "bomb.png")
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input", bomb,
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet")
    assert_refused(result, "bomb.png", code=1)


# ============================================================================ predict


def test_predict_threshold_nan_is_refused(cli, calibrated, data, tmp_path):
    # P-thr-nan. a0df06f: every image is called normal.
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet",
                 "--threshold", "nan")
    assert_refused(result, "nan")
    assert_names_key(result, "threshold")


def test_predict_pixel_threshold_nan_is_refused(cli, calibrated, data, tmp_path):
    # P-pix-nan. a0df06f: empty masks and a numpy cast warning.
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", "--device", "cpu", "--quiet",
                 "--save-masks", "--pixel-threshold", "nan")
    assert_refused(result, "nan")
    assert_names_key(result, "pixel_threshold")


@pytest.mark.parametrize("key,flags,value,code", [
    ("batch_size", ["--batch-size", "0"], "0", 2),  # a0df06f: "must be at least 1"
    ("device", ["--device", "foo"], "foo", 2),  # a0df06f: RuntimeError traceback
], ids=["P-bs-0", "P-device-foo"])
def test_predict_bad_flag(cli, finished_run, data, tmp_path, key, flags, value, code):
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input",
                 data / CLASS / "test", "--output-dir", tmp_path / "pred", "--quiet", *flags)
    assert_refused(result, value, code=code)
    assert_names_key(result, key)


def test_predict_missing_input_is_reported(cli, finished_run, tmp_path):
    # P-input-missing; passes on a0df06f
    result = cli("predict", "--checkpoint", finished_run / "last.pt", "--input",
                 tmp_path / "nope.png", "--output-dir", tmp_path / "pred", "--device", "cpu",
                 "--quiet")
    assert_refused(result, "nope.png", code=1)


def test_predict_rerun_leaves_no_stale_heatmaps(cli, finished_run, data, tmp_path):
    # P-rerun-stale. a0df06f: the second, smaller run leaves the first run's heatmaps.
    out = tmp_path / "pred"
    base = ["predict", "--checkpoint", finished_run / "last.pt", "--output-dir", out,
            "--device", "cpu", "--quiet"]
    assert cli(*base, "--input", data / CLASS / "test").code == 0
    second = cli(*base, "--input", data / CLASS / "test" / "good" / "000.png")
    if second.code == 2:  # refusing a non-empty output folder is fine too
        assert "Traceback" not in second.text
        return
    assert second.code == 0, second
    assert len(list((out / "heatmaps").iterdir())) == 1


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_decided_predict_threshold_must_be_finite(cli, calibrated, data, tmp_path, value):
    result = cli("predict", "--checkpoint", calibrated, "--input", data / CLASS / "test",
                 "--output-dir", tmp_path / "pred", f"--threshold={value}", "--quiet")
    assert_refused(result, value)
    assert_names_key(result, "threshold")
    assert not (tmp_path / "pred").exists()
