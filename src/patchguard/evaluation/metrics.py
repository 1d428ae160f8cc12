"""Detection and localisation metrics, vectorised for millions of pixels."""

from __future__ import annotations

import cv2
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


def average_precision(
    labels: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor
) -> float | None:
    """Step-wise average precision, as sklearn's average_precision_score; None for one class.

    Ties are one threshold, as in sklearn; None also when every label is positive (sklearn
    returns 1.0 there), matching auroc.
    """
    curve = _pr_curve(labels, scores)
    return None if curve is None else _ap_from_curve(*curve)


def f1_max(
    labels: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor
) -> tuple[float, float] | None:
    """Best F1 over thresholds (score >= threshold is anomalous), and that threshold; or None.

    Ties between thresholds go to the lowest one, as np.argmax over sklearn's ascending
    precision_recall_curve does.
    """
    curve = _pr_curve(labels, scores)
    return None if curve is None else _f1_from_curve(*curve)


def aupro(
    masks: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float | None:
    """Area under the per-region-overlap curve up to fpr_limit, divided by it; None for one class.

    MVTec AD's convention: regions are the 8-connected components of each image's mask, PRO is
    the mean over all regions of the fraction of the region predicted anomalous, FPR is over
    all normal pixels of all images, and the curve is integrated with the trapezoid rule,
    interpolated at exactly fpr_limit. num_thresholds=None uses every distinct score (exact);
    an integer K uses K thresholds evenly spaced between the lowest and highest score.
    """
    masks_np, scores = _pixels(masks, maps)
    return _aupro(masks_np, scores, fpr_limit, num_thresholds)


def compute_all(
    image_labels: np.ndarray | torch.Tensor,
    image_scores: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor | None = None,
    maps: np.ndarray | torch.Tensor | None = None,
    aupro_thresholds: int | None = None,
) -> dict[str, float | None]:
    """Image AUROC/AP/F1-max and, given masks and maps, pixel AUROC/AP/F1-max and AUPRO.

    The pixel metrics share one sort of the maps (sorting is nearly all of their cost), so pixel
    AUROC here comes from the ROC curve's trapezoids, equal to auroc() up to float rounding.
    """
    results: dict[str, float | None] = {"image_auroc": auroc(image_labels, image_scores)}
    curve = _pr_curve(image_labels, image_scores)
    results["image_ap"] = None if curve is None else _ap_from_curve(*curve)
    results["image_f1_max"] = None if curve is None else _f1_from_curve(*curve)[0]
    pixel_keys = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
    results.update(dict.fromkeys(pixel_keys))
    if masks is None:
        return results
    if maps is None:
        raise ValueError("masks given without maps")
    masks_np, scores = _pixels(masks, maps)
    flat_mask = masks_np.reshape(-1)
    n_pos = int(np.count_nonzero(flat_mask))
    if n_pos == 0 or n_pos == flat_mask.size:
        return results
    groups = _descending_groups(scores)
    tps, fps, thresholds = _counts(flat_mask, groups)
    results["pixel_auroc"] = _auroc_from_curve(tps, fps)
    results["pixel_ap"] = _ap_from_curve(tps, fps, thresholds, n_pos)
    results["pixel_f1_max"] = _f1_from_curve(tps, fps, thresholds, n_pos)[0]
    results["aupro"] = _aupro(masks_np, scores, 0.3, aupro_thresholds, groups)
    return results


def _pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, H, W) boolean masks and the maps as flat float scores."""
    masks_np = _to_numpy(masks).astype(bool, copy=False)
    maps_np = _to_numpy(maps)
    if masks_np.shape != maps_np.shape:
        raise ValueError(f"masks {masks_np.shape} and maps {maps_np.shape} differ in shape")
    if masks_np.ndim == 2:
        masks_np = masks_np[None]
    if masks_np.ndim != 3:
        raise ValueError(f"masks must be (H, W) or (N, H, W), got {masks_np.shape}")
    return masks_np, _float_scores(maps_np)


def _aupro(
    masks: np.ndarray,
    scores: np.ndarray,
    fpr_limit: float,
    num_thresholds: int | None,
    groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> float | None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    flat_mask = masks.reshape(-1)
    n_anomalous = int(np.count_nonzero(flat_mask))
    n_normal = flat_mask.size - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        return None

    region, n_regions = _region_ids(masks)
    # Each anomalous pixel carries 1/|its region|, so a cumulative sum of these weights over
    # pixels sorted by score is the sum of per-region overlaps at every threshold at once.
    inv_size = np.zeros(n_regions + 1)
    inv_size[1:] = 1.0 / np.bincount(region, minlength=n_regions + 1)[1:]

    if num_thresholds is None:
        order, group_end, _ = _descending_groups(scores) if groups is None else groups
        region_sorted = region[order]
        pro = np.cumsum(inv_size[region_sorted])[group_end] / n_regions
        fp = np.cumsum(region_sorted == 0, dtype=np.int64)[group_end]
    else:
        low, high = float(scores.min()), float(scores.max())
        thresholds = np.linspace(low, high, num_thresholds)
        # bin j holds scores in [t_j, t_{j+1}): those predicted at thresholds t_0..t_j only.
        # searchsorted, not a floor division, so a score equal to a threshold is never missed.
        bins = np.searchsorted(thresholds, scores, side="right") - 1
        pro_bins = np.bincount(
            bins[flat_mask], weights=inv_size[region[flat_mask]], minlength=num_thresholds
        )
        fp_bins = np.bincount(bins[~flat_mask], minlength=num_thresholds)
        # Highest threshold first, so FPR grows along the curve.
        pro = np.cumsum(pro_bins[::-1]) / n_regions
        fp = np.cumsum(fp_bins[::-1])
    fpr = np.concatenate(([0.0], fp / n_normal))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0)))
    return _trapezoid_up_to(fpr, pro, fpr_limit) / fpr_limit


def _float_scores(values: np.ndarray) -> np.ndarray:
    scores = values.reshape(-1)
    if scores.dtype == np.float16:
        scores = scores.astype(np.float32)  # exact, and float16 sorts far slower
    elif scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; the model diverged")
    return scores


def _descending_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Descending sort order, last sorted index of each group of equal scores, their values."""
    # Order inside a tie group never matters: every curve is read only at group ends.
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    group_end = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    return order, group_end, sorted_scores[group_end]


def _pr_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """True/false positives at each distinct threshold (descending), the thresholds, #positives."""
    labels_np = _to_numpy(labels).reshape(-1).astype(bool, copy=False)
    scores_np = _to_numpy(scores)
    if labels_np.size != scores_np.size:
        raise ValueError(f"labels {labels_np.size} and scores {scores_np.size} differ in size")
    n_pos = int(np.count_nonzero(labels_np))
    if n_pos == 0 or n_pos == labels_np.size:
        return None
    tps, fps, thresholds = _counts(labels_np, _descending_groups(_float_scores(scores_np)))
    return tps, fps, thresholds, n_pos


def _counts(
    labels: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order, group_end, thresholds = groups
    tps = np.cumsum(labels[order], dtype=np.int64)[group_end]
    fps = group_end + 1 - tps
    return tps, fps, thresholds


def _auroc_from_curve(tps: np.ndarray, fps: np.ndarray) -> float:
    # Trapezoids over tie groups count ties one half; integer sums stay exact (< 2**63).
    doubled = np.sum(np.diff(fps, prepend=0) * (tps + np.append(0, tps[:-1])))
    return float(doubled / (2.0 * tps[-1] * fps[-1]))


def _ap_from_curve(tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray, n_pos: int) -> float:
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _f1_from_curve(
    tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray, n_pos: int
) -> tuple[float, float]:
    # Same formula as F1 from sklearn's precision and recall, so exact ties break identically.
    precision = tps / (tps + fps)
    recall = tps / n_pos
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # the lowest threshold among equal maxima
    return float(f1[best]), float(thresholds[best])


def _region_ids(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat ids of 8-connected mask regions, numbered 1.. across all images (0 = normal)."""
    region = np.zeros(masks.shape, dtype=np.int32)
    n_regions = 0
    for index, mask in enumerate(masks):
        if not mask.any():
            continue
        count, labelled = cv2.connectedComponents(
            np.ascontiguousarray(mask).view(np.uint8), connectivity=8
        )
        region[index] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += count - 1
    return region.reshape(-1), n_regions


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y), x non-decreasing from 0, cut at x_max by interpolation."""
    end = int(np.searchsorted(x, x_max, side="right"))
    area = float(np.sum((x[1:end] - x[: end - 1]) * (y[1:end] + y[: end - 1])) / 2.0)
    if end < x.size:
        left, right = end - 1, end
        y_cut = y[left] + (y[right] - y[left]) * (x_max - x[left]) / (x[right] - x[left])
        area += (x_max - x[left]) * (y[left] + y_cut) / 2.0
    return float(area)


def _to_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)
