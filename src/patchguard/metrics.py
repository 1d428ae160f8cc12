"""Detection and localisation metrics, vectorised for millions of pixels."""

from __future__ import annotations

import numpy as np
import torch


def auroc(labels: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor) -> float | None:
    """Area under the ROC curve (ties count one half); None when only one class is present.

    Computed as the normalised Mann-Whitney U statistic from one sort, so a full test set's
    pixels (tens of millions) take about a second.
    """
    labels = _to_numpy(labels).reshape(-1).astype(bool)
    scores = _to_numpy(scores).reshape(-1).astype(np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; the model diverged")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average ranks over ties: rank of a tie group = mean of its positions (1-based).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [sorted_scores.size]))
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    positive_rank_sum = ranks[labels[order]].sum()
    u = positive_rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _to_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)
