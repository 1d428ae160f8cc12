"""Exact early stopping of ``standard`` for the image metrics (docs/evaluation-speed.md).

The image metrics (AUROC, AP, F1-max) read the image scores only through how normal and
anomalous scores interleave. ``standard`` keeps, per image, the candidate (the clean image or
a member's result) with the highest ``score`` objective: a normal image's reported score is
at least any candidate's score seen so far, an anomalous image's at most. So these bounds hold
for the final scores whatever the rest of the attack does, and a normal image whose bound is
above every anomalous image's bound (an anomalous one below every normal one's) is placed for
good: attacking it further cannot change a reported image metric. It is no longer attacked.

The pixel metrics have no such rule (each member's result may be an image's pixel worst case,
whatever the image score does), so early stopping is only used when no pixel metric is
reported; the evaluator decides that.
"""

from __future__ import annotations

import torch


class ScoreBounds:
    """Per test image a bound on its final image score under ``standard``: from below for a
    normal image, from above for an anomalous one (clean scores to start with)."""

    def __init__(self, clean_scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.bound = torch.as_tensor(clean_scores, dtype=torch.float32).clone()
        self.anomalous = torch.as_tensor(labels).bool().clone()

    def tighten(self, rows: torch.Tensor, scores: torch.Tensor) -> None:
        """Scores reached (by some candidate) at test images ``rows``: raise the normal ones'
        bounds, lower the anomalous ones'."""
        scores = scores.detach().float().cpu()
        old = self.bound[rows]
        self.bound[rows] = torch.where(self.anomalous[rows], torch.minimum(old, scores),
                                       torch.maximum(old, scores))

    def placed(self, rows: torch.Tensor) -> torch.Tensor:
        """Which of ``rows`` can no longer change an image metric (strict: ties count)."""
        normal = self.bound[~self.anomalous]
        anomalous = self.bound[self.anomalous]
        # With one class only the metrics are undefined (None) whatever the scores.
        top_anomalous = anomalous.max() if len(anomalous) else torch.tensor(-torch.inf)
        low_normal = normal.min() if len(normal) else torch.tensor(torch.inf)
        bound = self.bound[rows]
        return torch.where(self.anomalous[rows], bound < low_normal, bound > top_anomalous)


class ImageStop:
    """Early stopping of one batch: ``active`` (B,) marks the images still attacked."""

    def __init__(self, bounds: ScoreBounds, rows: torch.Tensor, device: torch.device) -> None:
        self.bounds, self.rows = bounds, rows.cpu()
        self.active = torch.ones(len(rows), dtype=torch.bool, device=device)
        self.refresh()

    def refresh(self) -> None:
        """Stop the images that the current bounds place."""
        placed = self.bounds.placed(self.rows).to(self.active.device)
        self.active &= ~placed

    def would_place(self, scores: torch.Tensor) -> torch.Tensor:
        """Which images (B,) scores (B,) would place, by the bounds as they are (no update)."""
        bounds = self.bounds
        normal = bounds.bound[~bounds.anomalous]
        anomalous = bounds.bound[bounds.anomalous]
        top_anomalous = float(anomalous.max()) if len(anomalous) else -torch.inf
        low_normal = float(normal.min()) if len(normal) else torch.inf
        labels = bounds.anomalous[self.rows].to(scores.device)
        return torch.where(labels, scores < low_normal, scores > top_anomalous)

    def reached(self, scores: torch.Tensor, which: torch.Tensor | None = None) -> None:
        """Image scores (B,) of candidates ``standard`` will consider (``which``: a (B,) mask
        of the images they belong to, default all); updates the bounds and ``active``."""
        which = torch.ones_like(self.active) if which is None else which
        index = which.nonzero().squeeze(1)
        if len(index):
            self.bounds.tighten(self.rows[index.cpu()], scores[index])
            self.refresh()


def scores_from_score_objective(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image scores back from ``score`` objective values (+score normal, -score anomalous)."""
    return torch.where(labels.bool(), -values, values)
