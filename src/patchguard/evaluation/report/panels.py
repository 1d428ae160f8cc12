"""Per-image panels of clean and attacked heatmaps, and a contact sheet (the colours: the one
post-processing component, :mod:`patchguard.models.postprocess`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from ...models.postprocess import PostProcessor, draw_outline, value_range
from ...models.postprocess import overlay as heatmap_overlay

if TYPE_CHECKING:
    from ..evaluator import Predictions

__all__ = ["draw_outline", "heatmap_overlay", "image_panel", "save_panels"]


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    scale = max(tile.shape[0] / 400, 0.3)
    cv2.putText(out, text, (3, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def image_panel(
    image: np.ndarray,
    clean_heat: np.ndarray,
    mask: np.ndarray | None,
    adv_image: np.ndarray | None = None,
    adv_heat: np.ndarray | None = None,
    title: str = "",
    perturbation_gain: float = 10.0,
) -> np.ndarray:
    """One row: image | clean heatmap | [attacked image | amplified perturbation | its heatmap]."""
    tiles = [_label(draw_outline(image, mask) if mask is not None else image, title or "image"),
             _label(heatmap_overlay(image, clean_heat, mask), "clean map")]
    if adv_image is not None and adv_heat is not None:
        delta = adv_image.astype(np.float32) - image.astype(np.float32)
        perturbation = np.clip(127.5 + delta * perturbation_gain, 0, 255).astype(np.uint8)
        tiles += [
            _label(adv_image, "attacked"),
            _label(perturbation, f"perturbation x{perturbation_gain:g}"),
            _label(heatmap_overlay(adv_image, adv_heat, mask), "attacked map"),
        ]
    return np.concatenate(tiles, axis=1)


def save_panels(clean: Predictions, output_dir: str | Path, attacked: Predictions | None = None,
                sheet_rows: int = 12) -> list[Path]:
    """Write one PNG per image and a contact sheet; return the written paths (sheet last).

    ``clean`` (and ``attacked``, the same images under attack) are predictions kept with their
    images (``predict_dataset(..., keep_images=True)``). Heat maps share one colour range: the
    1st to 99.9th percentile of the clean maps, so an attack that lights up a normal image or
    darkens a defect is visible as such.
    """
    if clean.images is None or (attacked is not None and attacked.images is None):
        raise ValueError("save_panels needs predictions kept with their images "
                         "(predict_dataset(..., keep_images=True))")
    images, clean_maps, masks, names, scores = (clean.images, clean.maps, clean.masks,
                                                clean.paths, clean.scores)
    adv_images = attacked.images if attacked is not None else None
    adv_maps = attacked.maps if attacked is not None else None
    adv_scores = attacked.scores if attacked is not None else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shared = value_range(clean_maps)
    post = PostProcessor()
    clean_heat = post.heat(clean_maps, shared)
    adv_heat = post.heat(adv_maps, shared) if adv_maps is not None else None
    written, rows = [], []
    for i, name in enumerate(names):
        title = Path(name).parent.name + "/" + Path(name).stem
        if scores is not None:
            title += f"  s={scores[i]:.2f}"
            if adv_scores is not None:
                title += f"->{adv_scores[i]:.2f}"
        mask = masks[i] if masks[i].any() else None
        panel = image_panel(
            images[i], clean_heat[i], mask,
            adv_images[i] if adv_images is not None else None,
            adv_heat[i] if adv_heat is not None else None,
            title=title,
        )
        path = output_dir / f"{i:04d}_{Path(name).parent.name}_{Path(name).stem}.png"
        Image.fromarray(panel).save(path)
        written.append(path)
        rows.append(panel)
    if rows:
        chosen = _spread(len(rows), sheet_rows)
        sheet = np.concatenate([rows[i] for i in chosen], axis=0)
        sheet_path = output_dir / "contact_sheet.png"
        Image.fromarray(sheet).save(sheet_path)
        written.append(sheet_path)
    return written


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})
