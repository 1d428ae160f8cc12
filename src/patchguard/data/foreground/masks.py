"""Foreground masks without a network: Otsu thresholds, morphology, GrabCut refinement, full
masks, and the statistics that tell a texture's masks from an object's.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# auto: thresholds of the texture test (see choose_full).
MAX_COVERAGE = 0.9
MIN_COVERAGE = 0.01
MAX_COVERAGE_CV = 0.5
MAX_BORDER_RATIO = 0.5


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) view of a grayscale, RGB or RGBA image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of real values (maximises the between-class variance of a histogram)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return low
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)[:-1].astype(np.float64)
    weight1 = values.size - weight0
    sum0 = np.cumsum(hist * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (float((hist * centres).sum()) - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    # Two well-separated modes give a plateau of equal scores: cut in its middle, not its start.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[1 + best[0]] + edges[1 + best[-1]]) / 2)


def _odd(value: float, minimum: int = 3) -> int:
    size = max(minimum, int(round(value)))
    return size if size % 2 else size + 1


def clean_mask(
    mask: np.ndarray,
    kernel_fraction: float = 0.02,
    keep_fraction: float = 0.9,
    max_hole_fraction: float = 0.02,
) -> np.ndarray:
    """Opening, closing, keep the largest components covering most of the area, fill small holes.

    ``kernel_fraction`` scales the elliptical structuring element with the shorter image side;
    the largest components are kept until they cover ``keep_fraction`` of the positive area;
    enclosed background regions smaller than ``max_hole_fraction`` of the image are filled
    (larger ones, such as a washer's hole, are real background and stay).
    """
    mask = np.asarray(mask).astype(np.uint8)
    height, width = mask.shape
    size = _odd(min(height, width) * kernel_fraction)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    order = np.argsort(-areas)
    covered = np.cumsum(areas[order]) / areas.sum()
    kept = order[: int(np.searchsorted(covered, keep_fraction - 1e-9)) + 1] + 1
    lookup = np.zeros(count, dtype=bool)
    lookup[kept] = True
    mask = lookup[labels]
    # Holes: background components that do not touch the border and are small enough.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (~mask).astype(np.uint8), connectivity=4
    )
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    inner = (x > 0) & (y > 0) & (x + w < width) & (y + h < height)
    small = stats[:, cv2.CC_STAT_AREA] < max_hole_fraction * height * width
    fill = inner & small
    fill[0] = False  # label 0 is the mask itself in the inverted image
    return mask | fill[labels]


def border_mask(shape: tuple[int, int]) -> np.ndarray:
    """True on the outermost pixel ring of an image of ``shape``."""
    border = np.zeros(shape, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    union = int(np.count_nonzero(pred | truth))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & truth)) / union


def refine_mask(
    image: np.ndarray, mask: np.ndarray, iterations: int = 3, max_side: int = 512
) -> np.ndarray:
    """Sharpen a coarse mask to pixel edges with GrabCut seeded by it (keeps it if that fails).

    Inside the coarse mask is probable foreground, a band around it probable background and the
    rest sure background, so colour models learnt per image re-assign, e.g., a washer's hole that
    the 14-pixel patches cannot resolve. Runs at most at ``max_side`` pixels for speed.
    """
    coarse = np.asarray(mask, dtype=bool)
    if not coarse.any() or coarse.all():
        return coarse
    height, width = coarse.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = as_rgb(image)
    small_img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    small = cv2.resize(coarse.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    band = _odd(min(size) * 0.07)
    near = cv2.dilate(small.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (band, band))).astype(bool)
    labels = np.where(small, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[~near] = cv2.GC_BGD
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(small_img[..., ::-1]), labels, None, *models,
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return coarse
    refined = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if scale < 1:
        refined = cv2.resize(refined.astype(np.uint8), (width, height),
                             interpolation=cv2.INTER_NEAREST) > 0
    refined = clean_mask(refined)
    # A refinement that throws most of the object away has latched onto the wrong colours.
    if refined.sum() < 0.25 * coarse.sum():
        return coarse
    return refined


def full_masks(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """All-foreground masks (for textures)."""
    return [np.ones(np.asarray(image).shape[:2], dtype=bool) for image in images]


def threshold_masks(images: Sequence[np.ndarray], blur_fraction: float = 0.01) -> list[np.ndarray]:
    """Otsu on a Gaussian-blurred grayscale image, border as background, morphology clean-up."""
    masks = []
    for image in images:
        gray = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY)
        sigma = max(1.0, min(gray.shape) * blur_fraction)
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
        _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = binary.astype(bool)
        border = border_mask(mask.shape)
        if mask[border].mean() > 0.5:
            mask = ~mask
        masks.append(clean_mask(mask))
    return masks


def mask_statistics(masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean coverage, its coefficient of variation and the border-to-coverage ratio of masks."""
    coverage = np.array([np.asarray(m, dtype=bool).mean() for m in masks], dtype=np.float64)
    border = np.array(
        [np.asarray(m, dtype=bool)[border_mask(np.asarray(m).shape)].mean() for m in masks]
    )
    mean = float(coverage.mean()) if coverage.size else 0.0
    return {
        "coverage": mean,
        "coverage_cv": float(coverage.std() / mean) if mean > 0 else float("inf"),
        # About 1 when the mask is spread like a texture, about 0 for a centred object.
        "border_ratio": float(border.mean() / mean) if mean > 0 else float("inf"),
    }


def choose_full(masks: Sequence[np.ndarray]) -> tuple[bool, str]:
    """Whether masks look like a texture's (so all-ones masks are better), and why."""
    stats = mask_statistics(masks)
    if stats["coverage"] > MAX_COVERAGE:
        return True, f"masks cover {stats['coverage']:.0%} of the images"
    if stats["coverage"] < MIN_COVERAGE:
        return True, f"masks cover only {stats['coverage']:.1%} of the images"
    if stats["coverage_cv"] > MAX_COVERAGE_CV:
        return True, f"coverage unstable across images (CV {stats['coverage_cv']:.2f})"
    if stats["border_ratio"] > MAX_BORDER_RATIO:
        return True, (
            f"masks reach the border like a texture (border/coverage {stats['border_ratio']:.2f})"
        )
    return False, (
        f"object-like masks (coverage {stats['coverage']:.0%}, CV {stats['coverage_cv']:.2f}, "
        f"border/coverage {stats['border_ratio']:.2f})"
    )
