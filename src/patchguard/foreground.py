"""Automatic foreground masks for classes without published ones (DINO PCA, Otsu, full, auto).

``dino``: the first principal component of a pretrained ViT's patch features over all training
images of a class separates object from background; its sign is chosen so that the foreground
covers fewer border patches, it is thresholded with Otsu, upsampled bilinearly to each image and
cleaned with morphology, then sharpened to pixel edges with GrabCut seeded by it.
``threshold``: Otsu on a blurred grayscale image with the border taken as background.
``full``: all ones (textures). ``auto``: ``dino`` (``threshold`` without pretrained weights),
replaced by ``full`` when the masks look like a texture's (nearly everything covered, unstable
coverage across images, or the mask touching the image border as much as its interior).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .data import DatasetError, list_images, read_image, resize_image

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BACKBONE",
    "METHODS",
    "TRAIN_FOLDERS",
    "auto_masks",
    "choose_full",
    "clean_mask",
    "dino_masks",
    "full_masks",
    "generate_foreground_masks",
    "mask_iou",
    "mask_statistics",
    "load_pretrained_backbone",
    "otsu_threshold",
    "patch_features",
    "pca_masks",
    "refine_mask",
    "threshold_masks",
]

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"
METHODS = ("auto", "dino", "threshold", "full")

# Per layout: (training-image folder, foreground-mask folder), relative to <dir>/<class>.
GENERATED_MARKER = ".patchguard_generated.json"


def generated_info(fg_dir: str | Path) -> dict | None:
    """What generated a foreground-mask folder (method, coverage), or None if it was published."""
    marker = Path(fg_dir) / GENERATED_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


TRAIN_FOLDERS: dict[str, tuple[str, str]] = {
    "mvtec": ("train/good", "train/foreground_mask"),
    "mpdd": ("train/good", "train/foreground_mask"),
    "dtd": ("train/good", "train/foreground_mask"),
    "wfdd": ("train/good", "train/foreground_mask"),
    "headct": ("train/good", "train/foreground_mask"),
    "folder": ("train/good", "train/foreground_mask"),
    "btad": ("train/ok", "train/foreground_mask"),
    "brats2021": ("train/normal", "train/foreground_mask"),
}

# auto: thresholds of the texture test (see choose_full).
MAX_COVERAGE = 0.9
MIN_COVERAGE = 0.01
MAX_COVERAGE_CV = 0.5
MAX_BORDER_RATIO = 0.5

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> np.ndarray:
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


def _border(shape: tuple[int, int]) -> np.ndarray:
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
    rgb = _as_rgb(image)
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


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------


def full_masks(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """All-foreground masks (for textures)."""
    return [np.ones(np.asarray(image).shape[:2], dtype=bool) for image in images]


def threshold_masks(images: Sequence[np.ndarray], blur_fraction: float = 0.01) -> list[np.ndarray]:
    """Otsu on a Gaussian-blurred grayscale image, border as background, morphology clean-up."""
    masks = []
    for image in images:
        gray = cv2.cvtColor(_as_rgb(image), cv2.COLOR_RGB2GRAY)
        sigma = max(1.0, min(gray.shape) * blur_fraction)
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
        _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = binary.astype(bool)
        border = _border(mask.shape)
        if mask[border].mean() > 0.5:
            mask = ~mask
        masks.append(clean_mask(mask))
    return masks


def pca_masks(
    features: torch.Tensor | np.ndarray,
    sizes: Sequence[tuple[int, int]],
    threshold: str = "otsu",
) -> list[np.ndarray]:
    """Masks from patch features (n, gh, gw, D): first principal component, signed, thresholded.

    The component is computed over all patches of all images; its sign makes the foreground the
    side covering fewer border patches; the threshold is Otsu's (or 0); the component map is
    upsampled bilinearly to each (height, width) in ``sizes`` before thresholding, then cleaned.
    """
    feats = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if feats.ndim != 4:
        raise ValueError(f"features must be (n, grid_h, grid_w, dim), not {tuple(feats.shape)}")
    n, grid_h, grid_w, dim = feats.shape
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} sizes for {n} feature maps")
    flat = feats.reshape(-1, dim)
    flat = flat - flat.mean(dim=0, keepdim=True)
    # First eigenvector of the D x D covariance: the same direction as the first right singular
    # vector of the centred features, cheap for any number of patches.
    _, vectors = torch.linalg.eigh(flat.T @ flat)
    component = (flat @ vectors[:, -1]).reshape(n, grid_h, grid_w).numpy()
    if threshold == "otsu":
        cut = otsu_threshold(component)
    elif threshold == "zero":
        cut = 0.0
    else:
        raise ValueError(f"threshold must be 'otsu' or 'zero', not {threshold!r}")
    border = _border((grid_h, grid_w))
    positive_border = np.count_nonzero(component[:, border] > cut)
    if positive_border > component[:, border].size - positive_border:
        component, cut = -component, -cut
    masks = []
    for values, (height, width) in zip(component, sizes):
        upsampled = cv2.resize(
            values.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR
        )
        masks.append(clean_mask(upsampled > cut))
    return masks


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pretrained_backbone(backbone: str = DEFAULT_BACKBONE, image_size: int = 224) -> nn.Module:
    """A timm ViT with pretrained weights (raises BackboneWeightsError when none can be found)."""
    from .model import create_backbone
    from .weights import load_backbone_weights

    model = create_backbone(backbone, image_size)
    source = load_backbone_weights(model, backbone)
    logger.info("foreground masks: %s weights from %s", backbone, source)
    return model.eval()


@torch.inference_mode()
def patch_features(
    images: Sequence[np.ndarray],
    model: nn.Module,
    layer: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 16,
) -> torch.Tensor:
    """Patch-token features (n, grid_h, grid_w, D) of a ViT block ``layer`` (default: last)."""
    from .model import FeatureExtractor

    depth = len(model.blocks)
    extractor = FeatureExtractor(model, [depth if layer is None else int(layer)], [])
    target = _resolve_device(device)
    extractor.to(target).eval()
    img_size = model.patch_embed.img_size
    side = int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size)
    grid_h, grid_w = (int(v) for v in model.patch_embed.grid_size)
    mean = torch.tensor(_IMAGENET_MEAN, device=target).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=target).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.stack(
            [resize_image(_as_rgb(images[i]), side)
             for i in range(start, min(start + batch_size, len(images)))]
        )
        x = torch.from_numpy(batch).to(target).permute(0, 3, 1, 2).float().div_(255.0)
        features, _ = extractor((x - mean) / std, with_attention=False)
        chunks.append(features.float().cpu().reshape(len(batch), grid_h, grid_w, -1))
    return torch.cat(chunks)


def dino_masks(
    images: Sequence[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = 224,
    layer: int | None = None,
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    threshold: str = "otsu",
    refine: bool = True,
) -> list[np.ndarray]:
    """Foreground masks from the first principal component of a ViT's patch features.

    With ``refine`` each patch-resolution mask is sharpened to pixel edges by :func:`refine_mask`.
    """
    if not len(images):
        return []
    if model is None:
        model = load_pretrained_backbone(backbone, image_size)
    features = patch_features(images, model, layer=layer, device=device)
    sizes = [tuple(np.asarray(images[i]).shape[:2]) for i in range(len(images))]
    masks = pca_masks(features, sizes, threshold=threshold)
    if refine:
        masks = [refine_mask(images[i], mask) for i, mask in enumerate(masks)]
    return masks


def mask_statistics(masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean coverage, its coefficient of variation and the border-to-coverage ratio of masks."""
    coverage = np.array([np.asarray(m, dtype=bool).mean() for m in masks], dtype=np.float64)
    border = np.array(
        [np.asarray(m, dtype=bool)[_border(np.asarray(m).shape)].mean() for m in masks]
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


def auto_masks(
    images: Sequence[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = 224,
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    base: str | None = None,
) -> tuple[str, list[np.ndarray]]:
    """Per-class choice: dino (threshold without weights) or full for textures; (method, masks)."""
    if base is None:
        if model is None:
            from .weights import BackboneWeightsError

            try:
                model = load_pretrained_backbone(backbone, image_size)
            except (BackboneWeightsError, ValueError) as error:
                logger.info(
                    "foreground masks: no pretrained %s weights (%s); using the threshold method",
                    backbone, str(error).splitlines()[0][:160],
                )
        base = "threshold" if model is None else "dino"
    if base == "dino":
        masks = dino_masks(images, backbone, image_size, device=device, model=model)
    elif base == "threshold":
        masks = threshold_masks(images)
    else:
        raise ValueError(f"base must be 'dino' or 'threshold', not {base!r}")
    texture, reason = choose_full(masks)
    logger.info("foreground masks (auto): %s -> %s", reason, "full" if texture else base)
    if texture:
        return "full", full_masks(images)
    return base, masks


# --------------------------------------------------------------------------------------------
# writing masks into a data set
# --------------------------------------------------------------------------------------------


class _LazyImages(Sequence):
    """Training images read from disk on access, so a large class is never held in memory."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [read_image(p) for p in self.paths[index]]
        return read_image(self.paths[index])


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from .checkpoint import atomic_write_bytes

    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise OSError(f"cannot encode mask for {path}")
    atomic_write_bytes(path, lambda handle: handle.write(encoded.tobytes()))


def generate_foreground_masks(
    dataset: str,
    dataset_dir: str | Path,
    class_name: str,
    method: str = "auto",
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = 224,
) -> Path:
    """Write 0/255 PNG foreground masks for a class's training images; return their folder.

    Masks are named like their images (``<stem>.png``; the loaders match masks by stem), existing
    masks are kept unless ``overwrite``, and every file is written atomically.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if dataset not in TRAIN_FOLDERS:
        raise DatasetError(
            f"foreground masks for layout {dataset!r} are not supported; "
            f"supported: {sorted(TRAIN_FOLDERS)}"
        )
    train_rel, fg_rel = TRAIN_FOLDERS[dataset]
    class_dir = Path(dataset_dir).expanduser() / class_name
    train_dir, fg_dir = class_dir / train_rel, class_dir / fg_rel
    paths = list_images(train_dir)
    if not paths:
        raise DatasetError(f"no training images in {train_dir}; cannot generate foreground masks")
    existing = {p.stem for p in list_images(fg_dir)}
    todo = [i for i, p in enumerate(paths) if overwrite or p.stem not in existing]
    if not todo:
        logger.info("%s: all %d foreground masks exist in %s", class_name, len(paths), fg_dir)
        return fg_dir
    # dino/auto look at the whole class at once: the principal component is a class property.
    images = _LazyImages(paths)
    if method == "auto":
        chosen, masks = auto_masks(images, backbone, image_size, device=device)
    elif method == "dino":
        chosen, masks = "dino", dino_masks(images, backbone, image_size, device=device)
    elif method == "threshold":
        chosen, masks = "threshold", threshold_masks([images[i] for i in todo])
        masks = dict(zip(todo, masks))  # type: ignore[assignment]
    else:
        chosen, masks = "full", None  # type: ignore[assignment]
    empty = 0
    iterator = todo
    if progress:
        from tqdm import tqdm

        iterator = tqdm(todo, desc=f"foreground masks {class_name}", unit="mask")
    coverages = []
    for index in iterator:
        if masks is None:
            from .data import read_size

            height, width = read_size(paths[index])
            mask = np.ones((height, width), dtype=bool)
        else:
            mask = masks[index]
        if not mask.any():
            empty += 1  # an empty mask would leave the pseudo anomalies nowhere to go
            mask = np.ones_like(mask, dtype=bool)
        coverages.append(float(mask.mean()))
        _write_mask(fg_dir / f"{paths[index].stem}.png", mask)
    if empty:
        logger.warning("%s: %d empty mask(s) replaced by full masks", class_name, empty)
    # A marker tells later runs (and `data info`) that these masks were generated, not published.
    from .checkpoint import atomic_write_text

    atomic_write_text(fg_dir / GENERATED_MARKER, json.dumps(
        {"method": chosen, "requested": method, "masks": len(todo),
         "mean_coverage": float(np.mean(coverages))}) + "\n")
    logger.info(
        "%s: wrote %d foreground masks to %s (method %s%s, mean coverage %.1f%%)",
        class_name, len(todo), fg_dir, chosen, f" chosen by {method}" if method == "auto" else "",
        100 * float(np.mean(coverages)),
    )
    return fg_dir
