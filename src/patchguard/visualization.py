"""Heatmaps over images with ground-truth outlines, per-image panels and a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def normalise_maps(maps: np.ndarray, low: float, high: float) -> np.ndarray:
    """Scale maps to [0, 1] with a shared (low, high) range so clean and attacked compare."""
    return np.clip((maps.astype(np.float32) - low) / max(high - low, 1e-8), 0.0, 1.0)


def heatmap_overlay(
    image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colours) over a uint8 RGB image; outline the mask in green."""
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    blended = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha)
    blended = blended.clip(0, 255).astype(np.uint8)
    return draw_outline(blended, mask) if mask is not None else blended


def draw_outline(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """Draw the contour of a binary mask on a copy of the image."""
    contours, _ = cv2.findContours(
        (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    out = np.ascontiguousarray(image.copy())
    thickness = max(1, image.shape[0] // 160)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


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


def save_panels(
    images: np.ndarray,
    clean_maps: np.ndarray,
    masks: np.ndarray,
    names: Sequence[str],
    output_dir: str | Path,
    adv_images: np.ndarray | None = None,
    adv_maps: np.ndarray | None = None,
    scores: Sequence[float] | None = None,
    adv_scores: Sequence[float] | None = None,
    sheet_rows: int = 12,
) -> list[Path]:
    """Write one PNG per image and a contact sheet; return the written paths (sheet last).

    Heat maps share one colour range: the 1st to 99.9th percentile of the clean maps, so an
    attack that lights up a normal image or darkens a defect is visible as such.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    low, high = np.percentile(clean_maps.astype(np.float32), [1.0, 99.9])
    clean_heat = normalise_maps(clean_maps, low, high)
    adv_heat = normalise_maps(adv_maps, low, high) if adv_maps is not None else None
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless servers and in DataLoader-free CLIs
    import matplotlib.pyplot as plt

    return plt


def plot_training_log(log_path: str | Path, output_path: str | Path) -> Path:
    """Plot the per-view losses and images/s of a ``train_log.jsonl`` to a PNG."""
    import json

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    plt = _pyplot()
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in records]
    for key in ("loss", "clean", "adv_clean", "pseudo", "adv_pseudo"):
        if records and key in records[0]:
            ax_loss.plot(epochs, [r[key] for r in records], label=key, marker=".")
    ax_loss.set(xlabel="epoch", ylabel="loss (sum over patches, mean over images)",
                title="training loss per view")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    ax_speed.plot(epochs, [r["images_per_s"] for r in records], marker=".")
    ax_speed.set(xlabel="epoch", ylabel="images/s", title="throughput")
    fig.tight_layout()
    output_path = Path(output_path)
    fig.savefig(output_path, dpi=100)
    plt.close(fig)
    return output_path


def plot_robustness(rows: Sequence[dict], output_path: str | Path) -> Path:
    """Bar chart per class: clean and attacked image/pixel AUROC, one colour per recipe/attack."""
    plt = _pyplot()
    classes = list(dict.fromkeys(r["class_name"] for r in rows))
    settings = list(dict.fromkeys(
        (r.get("adv_train", True), r["attack"], r["epsilon"]) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.8 / max(len(settings), 1)
    for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
        for j, (adv, attack, eps) in enumerate(settings):
            values = []
            for name in classes:
                match = [r for r in rows if r["class_name"] == name and
                         r.get("adv_train", True) == adv and r["attack"] == attack and
                         r["epsilon"] == eps]
                value = match[0][metric] if match else None
                values.append(float("nan") if value is None else value)
            label = f"{'adv-trained' if adv else 'no adv'}, " + (
                "clean" if attack == "clean" else f"{attack} {eps:g}/255")
            positions = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(classes))]
            ax.bar(positions, values, width, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(classes)), classes)
        ax.set(ylim=(0, 1), title=metric.replace("_", " "))
    axes[0].set_ylabel("AUROC (0.5 = chance)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    output_path = Path(output_path)
    fig.savefig(output_path, dpi=100)
    plt.close(fig)
    return output_path
