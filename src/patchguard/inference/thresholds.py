"""Decision thresholds from held-out normal scores (a false-positive-rate quantile) or, with known
anomalies, the F1-optimal one; stored in a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.checkpoint import load_checkpoint, save_checkpoint


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


def calibrate_thresholds(
    normal_scores: Sequence[float] | np.ndarray | torch.Tensor,
    target_fpr: float = 0.01,
    normal_pixel_values: np.ndarray | torch.Tensor | None = None,
    labelled: Any = None,
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

    Returns:
        ``{"image", "pixel", "method", "target_fpr", "n_normal", "n_anomalous"}``.
    """
    normal = np.asarray(torch.as_tensor(normal_scores).double().cpu()).ravel()
    if normal.size == 0:
        raise ValueError("calibration needs at least one normal image score")
    if not np.all(np.isfinite(normal)):
        raise ValueError("normal scores contain NaN or infinite values")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} must be in [0, 1)")
    pixel = None
    if normal_pixel_values is not None:
        values = np.asarray(torch.as_tensor(normal_pixel_values).float().cpu()).ravel()
        pixel = _float32_ceiling(_fpr_threshold(values, target_fpr)) if values.size else None
    result: dict[str, Any] = {
        "image": _float32_ceiling(_fpr_threshold(normal, target_fpr)),
        "pixel": pixel,
        "method": "normal-quantile",
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
