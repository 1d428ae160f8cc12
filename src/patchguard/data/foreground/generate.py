"""Writing generated foreground masks into a data set's layout, with a marker saying so."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ...config import DEFAULT_BACKBONE
from ...utils.files import atomic_write_bytes, atomic_write_text
from ..images import image_dimensions, list_images, read_image
from ..layouts.classes import resolve_class_dir
from ..layouts.folders import SPECS, foreground_folders
from ..records import DatasetError
from .dino import auto_masks, dino_masks
from .masks import threshold_masks

logger = logging.getLogger(__name__)

METHODS = ("auto", "dino", "threshold", "full")
GENERATED_MARKER = ".patchguard_generated.json"


def generated_info(fg_dir: str | Path) -> dict | None:
    """What generated a foreground-mask folder (method, coverage), or None if it was published."""
    marker = Path(fg_dir) / GENERATED_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None



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
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise OSError(f"cannot encode mask for {path}")
    atomic_write_bytes(path, lambda handle: handle.write(encoded.tobytes()), own=False)


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
    if dataset not in SPECS:
        raise DatasetError(
            f"foreground masks for layout {dataset!r} are not supported; "
            f"supported: {sorted(SPECS)}"
        )
    train_dir, fg_dir = foreground_folders(dataset, resolve_class_dir(dataset_dir, class_name))
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
            width, height = image_dimensions(paths[index])
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
    atomic_write_text(fg_dir / GENERATED_MARKER, json.dumps(
        {"method": chosen, "requested": method, "masks": len(todo),
         "mean_coverage": float(np.mean(coverages))}) + "\n")
    logger.info(
        "%s: wrote %d foreground masks to %s (method %s%s, mean coverage %.1f%%)",
        class_name, len(todo), fg_dir, chosen, f" chosen by {method}" if method == "auto" else "",
        100 * float(np.mean(coverages)),
    )
    return fg_dir
