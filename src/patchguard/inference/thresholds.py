"""Decision thresholds from held-out normal scores (a false-positive-rate quantile, or a Gaussian
estimate when there are too few scores for the quantile) or, with known anomalies, the
F1-optimal one; stored in a checkpoint.

How many normal images a target false-positive rate needs: an empirical threshold at rate r can
only be resolved with at least ceil(1 / r) images (with fewer it sits just above the highest
score, and a new normal image exceeds the highest of n with probability 1 / (n + 1)), and is
stable with about 10 / r. Below 1 / r, ``method="auto"`` uses the Gaussian prediction bound

    mean + t_{n-1}(1 - r) * std * sqrt(1 + 1/n)

(the one-sided (1 - r) prediction limit for one more score from a normal distribution, with
the sample mean and standard deviation of the n scores), never below the empirical threshold.
It uses every score rather than the largest alone, so it moves little when one image is added.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.checks import InputError


def _between(low: float, high: float) -> float:
    """A value in (low, high]: their midpoint, or high when they are adjacent floats."""
    middle = (low + high) / 2
    return float(middle) if low < middle <= high else float(high)


def _fpr_threshold(values: np.ndarray, target_fpr: float) -> float:
    """Most permissive threshold t with mean(values >= t) <= target_fpr, midway between samples.

    The midpoint between the last excluded and the first allowed sample keeps the empirical rate
    and leaves a margin on both sides, instead of sitting exactly on a normal sample's value.
    """
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = values.size
    allowed = int(math.floor(target_fpr * n + 1e-9))  # normal samples allowed at or above t
    if allowed >= n:
        return float(values[0])
    below = values[n - allowed - 1]
    if allowed == 0 or values[n - allowed] == below:
        # Nothing above may be flagged, or ties straddle the cut: go just above ``below`` so
        # that no further normal sample is flagged.
        return float(np.nextafter(below, np.inf))
    return _between(below, values[n - allowed])


def _f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold (decision: score >= t) maximising F1 on labelled scores; returns (t, F1)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    predicted = np.arange(1, scores.size + 1)
    # Only cut where the score changes: tied scores always share one decision.
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    positives = max(int(labels.sum()), 1)
    f1 = np.where(last_of_run, 2 * true_pos / (predicted + positives), -1.0)
    best = int(np.argmax(f1))
    cut = float(sorted_scores[best])
    if best + 1 == scores.size:
        return cut, float(f1[best])
    return _between(float(sorted_scores[best + 1]), cut), float(f1[best])


def _float32_ceiling(value: float | None) -> float | None:
    """The smallest float32 value >= value.

    Scores are float32, and NumPy compares a float32 array with a Python float in float32: a
    threshold that is not a float32 value could round down onto a normal score and flag it.
    """
    if value is None or not math.isfinite(value):
        return value
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


@functools.lru_cache(maxsize=256)  # calibration asks for the same few (p, dof) pairs
def student_t_quantile(p: float, dof: float) -> float:
    """The p-quantile of Student's t distribution with ``dof`` degrees of freedom (p >= 0.5)."""
    if not 0.5 <= p < 1.0 or dof <= 0:
        raise ValueError(f"student_t_quantile needs 0.5 <= p < 1 and dof > 0, not {p}, {dof}")

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2.0
    for _ in range(200):  # bisection to float precision
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return high


def images_needed(target_fpr: float) -> tuple[int, int]:
    """Normal images a target FPR needs: (to resolve it, ceil(1/r); for a stable one, 10/r)."""
    return math.ceil(1.0 / target_fpr - 1e-9), math.ceil(10.0 / target_fpr - 1e-9)


def few_normals_note(n_normal: int, target_fpr: float) -> str | None:
    """Why ``n_normal`` images are too few for ``target_fpr`` and how many it needs, or None."""
    if target_fpr <= 0:
        return None
    resolve, stable = images_needed(target_fpr)
    if n_normal >= resolve:
        return None
    return (f"{n_normal} normal image(s), too few for a false-positive rate of {target_fpr:g}: "
            f"an empirical threshold needs at least {resolve} (1/FPR) and is stable with about "
            f"{stable} (10/FPR); with fewer, the image threshold is a Gaussian estimate from "
            "the scores' mean and spread (threshold method auto)")


def gaussian_threshold(values: np.ndarray, target_fpr: float) -> float:
    """The Gaussian prediction bound (module docstring), never below the empirical one."""
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    empirical = _fpr_threshold(values, target_fpr)
    if n < 2 or target_fpr <= 0:
        return empirical
    spread = float(values.std(ddof=1))
    bound = float(values.mean()) + student_t_quantile(1.0 - target_fpr, n - 1) * spread * \
        math.sqrt(1.0 + 1.0 / n)
    return max(bound, empirical)


METHODS = ("auto", "quantile", "gaussian")


def calibrate_thresholds(
    normal_scores: Sequence[float] | np.ndarray | torch.Tensor,
    target_fpr: float = 0.01,
    normal_pixel_values: np.ndarray | torch.Tensor | None = None,
    labelled: Any = None,
    method: str = "quantile",
) -> dict[str, Any]:
    """Image (and pixel) thresholds from held-out normal scores, or F1-optimal with anomalies.

    Args:
        normal_scores: image scores of held-out normal images.
        target_fpr: allowed fraction of normal images (and normal pixels) at or above the
            threshold; the threshold is the most permissive one meeting it on these samples.
        normal_pixel_values: anomaly-map values of normal images (any shape) for the pixel
            threshold, chosen for the same false-positive rate per pixel.
        labelled: scores of known anomalous images (1-D), or a ``(scores, labels)`` pair of
            labelled images (1 = anomalous). When given, the image threshold maximises F1 over
            the normal scores plus these, and ``method`` is ``"f1"``.
        method: the image threshold from normal scores: ``"quantile"`` (empirical), ``"gaussian"``
            (the prediction bound of the module docstring) or ``"auto"`` (gaussian when there
            are fewer than ceil(1 / target_fpr) scores, else quantile). Pixel thresholds are
            always empirical: every image adds thousands of pixels.

    Returns:
        ``{"image", "pixel", "method", "target_fpr", "n_normal", "n_anomalous"}``; ``method``
        is ``"normal-quantile"``, ``"gaussian-bound"`` or ``"f1"``.
    """
    normal = np.asarray(torch.as_tensor(normal_scores).double().cpu()).ravel()
    if normal.size == 0:
        raise ValueError("calibration needs at least one normal image score")
    if not np.all(np.isfinite(normal)):
        raise ValueError("normal scores contain NaN or infinite values")
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or \
            not 0.0 <= target_fpr < 1.0:
        raise InputError("target_fpr (--target-fpr)", target_fpr, "must be a number in [0, 1)",
                         "e.g. 0.01")
    if method not in METHODS:
        raise InputError("threshold method (--threshold-method)", method,
                         f"must be one of {', '.join(METHODS)}")
    gaussian = method == "gaussian" or (
        method == "auto" and target_fpr > 0 and normal.size < images_needed(target_fpr)[0])
    if method == "gaussian" and (target_fpr <= 0 or normal.size < 2):
        raise InputError("threshold method (--threshold-method)", method,
                         "needs --target-fpr > 0 and at least 2 normal images",
                         "use --threshold-method quantile")
    pixel = None
    if normal_pixel_values is not None:
        values = np.asarray(torch.as_tensor(normal_pixel_values).float().cpu()).ravel()
        pixel = _float32_ceiling(_fpr_threshold(values, target_fpr)) if values.size else None
    image = gaussian_threshold(normal, target_fpr) if gaussian else _fpr_threshold(normal,
                                                                                   target_fpr)
    result: dict[str, Any] = {
        "image": _float32_ceiling(image),
        "pixel": pixel,
        "method": "gaussian-bound" if gaussian else "normal-quantile",
        "target_fpr": float(target_fpr),
        "n_normal": int(normal.size),
        "n_anomalous": 0,
    }
    if labelled is not None:
        if isinstance(labelled, tuple) and len(labelled) == 2:
            extra = np.asarray(labelled[0], dtype=np.float64).ravel()
            extra_labels = np.asarray(labelled[1]).astype(np.int64).ravel()
        else:
            extra = np.asarray(torch.as_tensor(labelled).double().cpu()).ravel()
            extra_labels = np.ones_like(extra, dtype=np.int64)
        if extra.size != extra_labels.size:
            raise ValueError("labelled scores and labels differ in length")
        if int(extra_labels.sum()) == 0:
            raise ValueError("F1 calibration needs at least one anomalous score")
        scores = np.concatenate([normal, extra])
        labels = np.concatenate([np.zeros(normal.size, np.int64), extra_labels])
        threshold, f1 = _f1_threshold(scores, labels)
        result.update(image=_float32_ceiling(threshold), method="f1", target_fpr=None, f1=f1,
                      n_normal=int((labels == 0).sum()), n_anomalous=int(labels.sum()))
    return result


def write_thresholds(
    checkpoint_path: str | Path,
    thresholds: dict[str, Any],
    normal_scores: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Store thresholds (and optionally the normal scores) in a checkpoint, atomically.

    Every other key of the checkpoint is kept as it was.
    """
    state = load_checkpoint(checkpoint_path)
    # Plain Python values only: the checkpoint must stay loadable with weights_only=True.
    state["thresholds"] = {
        key: (float(value) if isinstance(value, (np.floating, np.integer)) else value)
        for key, value in thresholds.items()
    }
    if normal_scores is not None:
        state["normal_scores"] = torch.as_tensor(np.asarray(normal_scores, np.float32)).flatten()
    return save_checkpoint(checkpoint_path, state)
