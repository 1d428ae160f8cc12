import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from patchguard.evaluation.metrics import aupro, auroc, average_precision, compute_all, f1_max


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 5000)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding creates many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_pixel_maps_shape_and_single_class():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) > 0.8
    maps = rng.random((3, 8, 8)).astype(np.float16) + masks
    assert auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert auroc(np.zeros(5), np.arange(5)) is None


def test_auroc_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])


def tied_scores(seed: int, n: int = 4000, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), decimals)  # rounding creates heavy ties
    return labels, scores


def sklearn_f1_max(labels, scores) -> tuple[float, float]:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2 * precision * recall / np.maximum(denominator, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return f1[best], thresholds[best]


@pytest.mark.parametrize(("seed", "decimals"), [(0, 1), (1, 0), (2, 3), (3, 8)])
def test_average_precision_equals_sklearn_with_ties(seed, decimals):
    labels, scores = tied_scores(seed, decimals=decimals)
    expected = average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert average_precision(labels, scores.astype(np.float32)) == pytest.approx(
        average_precision_score(labels, scores.astype(np.float32)), abs=1e-12
    )


@pytest.mark.parametrize(("seed", "decimals"), [(0, 1), (1, 0), (2, 3), (3, 8)])
def test_f1_max_equals_sklearn_with_ties(seed, decimals):
    labels, scores = tied_scores(seed, decimals=decimals)
    best, threshold = f1_max(labels, scores)
    expected_best, expected_threshold = sklearn_f1_max(labels, scores)
    assert best == pytest.approx(expected_best, abs=1e-12)
    assert threshold == expected_threshold
    predicted = scores >= threshold
    tp = np.sum(predicted & labels)
    assert best == pytest.approx(2 * tp / (predicted.sum() + labels.sum()), abs=1e-12)


def test_ap_and_f1_small_hand_example():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1): AP = .5 + .5 * 2/3.
    assert average_precision(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert f1_max(labels, scores) == pytest.approx((0.8, 0.35))


def test_f1_max_breaks_exact_ties_like_sklearn():
    # F1 is 2/3 both at 0.9 (P=1, R=1/2) and at 0.6 (P=1/2, R=1); argmax over sklearn's
    # ascending thresholds picks 0.6.
    labels, scores = np.array([1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6])
    assert sklearn_f1_max(labels, scores) == (pytest.approx(2 / 3), 0.6)
    assert f1_max(labels, scores) == (pytest.approx(2 / 3), 0.6)


def test_ap_and_f1_single_class_and_torch_input():
    assert average_precision(np.zeros(5), np.arange(5)) is None
    assert average_precision(np.ones(5), np.arange(5)) is None
    assert f1_max(np.zeros(5), np.arange(5)) is None
    assert f1_max(np.ones(5), np.arange(5)) is None
    labels, scores = tied_scores(4, n=500)
    assert average_precision(torch.from_numpy(labels), torch.from_numpy(scores)) == pytest.approx(
        average_precision_score(labels, scores.astype(np.float32)), abs=1e-12
    )
    with pytest.raises(ValueError, match="NaN"):
        f1_max([0, 1], [0.1, float("inf")])


def blob_masks(seed: int, n: int = 3, size: int = 16) -> np.ndarray:
    """n masks with 2-4 rectangular or diagonal blobs each; some touch only at corners."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(2, 5)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            mask[y : y + h, x : x + w] = True
        # A diagonal touching chain: one region under 8-connectivity, several under 4.
        start = rng.integers(0, size - 4)
        for k in range(4):
            mask[start + k, size - 1 - k] = True
    return masks


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Loop over every threshold and every 8-connected region, then clip-and-integrate."""
    regions = []  # (image index, boolean region mask)
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == k) for k in range(1, count + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        overlaps = [(predicted[i] & region).sum() / region.sum() for i, region in regions]
        fpr = (predicted & normal).sum() / normal.sum()
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def blob_maps(masks: np.ndarray, seed: int, decimals: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.normal(masks * 1.0, 0.8)
    return maps if decimals is None else np.round(maps, decimals)


@pytest.mark.parametrize(("seed", "decimals"), [(0, 1), (1, 2), (2, None)])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_exact_equals_reference(seed, decimals, fpr_limit):
    masks = blob_masks(seed)
    maps = blob_maps(masks, seed, decimals)
    expected = reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_binned_matches_exact(seed):
    masks = blob_masks(seed)
    # On a 0.01 grid, bins finer than the grid reproduce every exact threshold's prediction.
    gridded = blob_maps(masks, seed, 2)
    exact = aupro(masks, gridded)
    assert aupro(masks, gridded, num_thresholds=20_000) == pytest.approx(exact, abs=1e-9)
    continuous = blob_maps(masks, seed, None).astype(np.float32)
    exact = aupro(masks, continuous)
    assert aupro(masks, continuous, num_thresholds=2000) == pytest.approx(exact, abs=5e-3)
    assert abs(aupro(masks, continuous, num_thresholds=5) - exact) > 1e-6  # coarse bins differ


def test_aupro_weighs_regions_not_pixels():
    # One big region fully found, one small region missed: PRO is 1/2, not the pixel recall.
    mask = np.zeros((1, 16, 16), dtype=bool)
    mask[0, :8, :8] = True
    mask[0, 14, 14] = True
    scores = np.zeros((1, 16, 16))
    scores[0, :8, :8] = 1.0
    # Curve: (0, 0) -> (0, 1/2) -> (1, 1); area to 0.3 = 0.3 * (1/2 + 0.65) / 2.
    assert aupro(mask, scores) == pytest.approx((0.5 + 0.65) / 2)


def test_aupro_edge_cases():
    masks = blob_masks(0)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, masks.astype(np.float32), num_thresholds=2) == pytest.approx(1.0)
    constant = np.full(masks.shape, 0.7, dtype=np.float32)
    # One threshold predicts everything: the curve is the diagonal, area/limit = limit/2.
    assert aupro(masks, constant) == pytest.approx(0.15)
    assert aupro(masks, constant, num_thresholds=10) == pytest.approx(0.15)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)  # inverted map: fpr=1 before any pro
    assert aupro(np.zeros_like(masks), constant) is None
    assert aupro(np.ones_like(masks), constant) is None
    assert aupro(masks[0], masks[0].astype(float)) == pytest.approx(1.0)  # one (H, W) image
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, constant, fpr_limit=0.0)
    with pytest.raises(ValueError, match="shape"):
        aupro(masks, constant[:2])


def test_compute_all_keys_and_values():
    masks = blob_masks(3)
    maps = blob_maps(masks, 3, 1).astype(np.float32)
    image_labels = masks.reshape(len(masks), -1).any(axis=1).astype(int)
    image_labels[0] = 0
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    results = compute_all(image_labels, image_scores, torch.from_numpy(masks), maps)
    assert results == pytest.approx(
        {
            "image_auroc": roc_auc_score(image_labels, image_scores),
            "image_ap": average_precision_score(image_labels, image_scores),
            "image_f1_max": sklearn_f1_max(image_labels, image_scores)[0],
            "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
            "pixel_ap": average_precision_score(masks.ravel(), maps.ravel()),
            "pixel_f1_max": sklearn_f1_max(masks.ravel(), maps.ravel())[0],
            "aupro": reference_aupro(masks, maps, 0.3),
        },
        abs=1e-9,
    )
    assert results["pixel_auroc"] == pytest.approx(auroc(masks, maps), abs=1e-12)
    no_anomaly = compute_all(image_labels, image_scores, np.zeros_like(masks), maps)
    assert no_anomaly["pixel_ap"] is None and no_anomaly["aupro"] is None
    image_only = compute_all(image_labels, image_scores)
    assert image_only["pixel_auroc"] is None and image_only["aupro"] is None
    assert image_only["image_ap"] == results["image_ap"]
