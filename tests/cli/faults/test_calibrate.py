"""``calibrate``: target rates, too few or unreadable normal images.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import pytest

from .common import (
    CLASS,
    assert_names_key,
    assert_refused,
    bomb_png,
    digest,
)

# ============================================================================ calibrate


@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_calibrate_refuses_bad_target_fpr(cli, run_copy, data, value):
    # C-fpr-*; passed before the fixes
    before = digest(run_copy / "last.pt")
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                 data / CLASS / "train/good", "--device", "cpu", "--quiet", "--target-fpr", value)
    assert_refused(result, value)
    assert digest(run_copy / "last.pt") == before


def test_calibrate_warns_when_too_few_normals(cli, run_copy, data):
    # C-few-normals; passed before the fixes too
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                 data / CLASS / "train/good", "--device", "cpu", "--quiet")
    assert result.code == 0 and "100" in result.text, result


@pytest.mark.parametrize("case", ["missing-dir", "bomb", "imported-no-scores"])
def test_calibrate_without_usable_normals(cli, imported, tmp_path, run_copy, case):
    # C-normal-missing / C-normal-bomb. failed before: "no readable normal image: nothing to
    #   calibrate on" is raised before the skipped inputs and their reasons are listed.
    # C-imported; passed before the fixes too
    if case == "imported-no-scores":
        result = cli("calibrate", "--checkpoint", imported, "--device", "cpu", "--quiet")
        assert_refused(result, "normal")
        return
    normal = tmp_path / "nope" if case == "missing-dir" else bomb_png(tmp_path / "bomb.png")
    before = digest(run_copy / "last.pt")
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir", normal,
                 "--device", "cpu", "--quiet")
    assert_refused(result, "normal", normal.name)
    if case == "bomb":
        assert "pixels" in result.text, result  # the reason PIL gave
    assert digest(run_copy / "last.pt") == before


def test_calibrate_device_foo(cli, run_copy, data):
    # C-device-foo. Before the fixes: RuntimeError traceback.
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                 data / CLASS / "train/good", "--device", "foo", "--quiet")
    assert_refused(result, "foo")
    assert_names_key(result, "device")


def test_calibrate_batch_size_zero_is_refused_before_scoring(cli, run_copy, data):
    # C-bs-0. Before the fixes: "batch_size must be at least 1" (value not named).
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                 data / CLASS / "train/good", "--batch-size", "0", "--quiet")
    assert_refused(result, "--batch-size", "0")


def test_decided_target_fpr_zero_is_allowed(cli, run_copy, data):
    # [0, 1) in both verbs: 0 puts the threshold just above every normal score.
    result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                 data / CLASS / "train/good", "--target-fpr", "0", "--device", "cpu", "--quiet")
    assert result.code == 0 and "false-positive rate 0.0000" in result.text, result


def test_calibrate_with_few_normals_uses_the_gaussian_estimate_and_the_card_says_so(cli, run_copy,
                                                                                    data):
    ckpt = run_copy / "last.pt"
    result = cli("calibrate", "--checkpoint", ckpt, "--normal-dir", data / CLASS / "train/good",
                 "--device", "cpu", "--quiet")
    assert result.code == 0 and "(gaussian-bound)" in result.text, result
    info = cli("info", "--checkpoint", ckpt)
    assert "gaussian-bound (target FPR 0.01), from 4 normal image(s)" in info.text, info
    assert "threshold note" in info.text and "at least 100 (1/FPR)" in info.text, info
    quantile = cli("calibrate", "--checkpoint", ckpt, "--normal-dir",
                   data / CLASS / "train/good", "--threshold-method", "quantile", "--quiet")
    assert quantile.code == 0 and "(normal-quantile)" in quantile.text, quantile
