"""Thresholds from few normal images: the counts a target FPR needs and the Gaussian estimate,
against scipy and against the false-positive rate it gives on fresh normal scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from patchguard.inference.thresholds import (
    calibrate_thresholds,
    few_normals_note,
    gaussian_threshold,
    images_needed,
    student_t_quantile,
)


@pytest.mark.parametrize("p,dof", [(0.99, 1), (0.99, 5), (0.999, 2), (0.95, 30), (0.9999, 500),
                                   (0.975, 3.5)])
def test_student_t_quantile_matches_scipy(p, dof):
    assert student_t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=1e-10)


def test_gaussian_bound_is_the_prediction_limit():
    scores = np.array([0.3, -0.1, 0.5, 0.2, 0.0, 0.4])
    n = scores.size
    expected = scores.mean() + stats.t.ppf(0.99, n - 1) * scores.std(ddof=1) * math.sqrt(1 + 1 / n)
    assert gaussian_threshold(scores, 0.01) == pytest.approx(expected, rel=1e-12)
    # Never below the empirical threshold (which here flags none of the six).
    assert gaussian_threshold(scores, 0.01) > scores.max()


def test_few_images_gaussian_keeps_the_target_rate_where_the_maximum_does_not():
    """Six held-out normal images at FPR 0.05, repeated: the share of fresh normal scores above
    the threshold. The empirical rule (just above the maximum) gives 1/7 = 0.14; the Gaussian
    prediction bound gives the target on Gaussian scores."""
    rng = np.random.default_rng(0)
    held = rng.normal(size=(4000, 6))
    fresh = rng.normal(size=(4000, 200))
    target = 0.05
    gaussian = np.array([calibrate_thresholds(h, target, method="gaussian")["image"]
                         for h in held])
    quantile = np.array([calibrate_thresholds(h, target, method="quantile")["image"]
                         for h in held])
    fpr_gaussian = float((fresh >= gaussian[:, None]).mean())
    fpr_quantile = float((fresh >= quantile[:, None]).mean())
    assert fpr_quantile == pytest.approx(1 / 7, abs=0.01)
    assert fpr_gaussian == pytest.approx(target, abs=0.008)


def test_auto_switches_at_one_over_fpr_and_says_how_many_images_are_needed():
    assert images_needed(0.01) == (100, 1000)
    assert images_needed(0.05) == (20, 200)
    few, many = np.linspace(0, 1, 99), np.linspace(0, 1, 100)
    assert calibrate_thresholds(few, 0.01, method="auto")["method"] == "gaussian-bound"
    assert calibrate_thresholds(many, 0.01, method="auto")["method"] == "normal-quantile"
    assert calibrate_thresholds(few, 0.0, method="auto")["method"] == "normal-quantile"
    note = few_normals_note(6, 0.01)
    assert note.startswith("6 normal image(s), too few for a false-positive rate of 0.01")
    assert "at least 100 (1/FPR)" in note and "about 1000 (10/FPR)" in note
    assert few_normals_note(100, 0.01) is None and few_normals_note(3, 0.0) is None


@pytest.mark.parametrize("kwargs,needle", [
    ({"target_fpr": 1.0}, r"target_fpr \(--target-fpr\) = 1.0: must be a number in \[0, 1\)"),
    ({"target_fpr": float("nan")}, "nan"),
    ({"method": "median"}, "must be one of auto, quantile, gaussian"),
    ({"method": "gaussian", "target_fpr": 0.0}, "needs --target-fpr > 0"),
])
def test_calibration_arguments_are_checked(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        calibrate_thresholds([0.1, 0.2, 0.3], **kwargs)
