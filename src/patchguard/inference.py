"""Inference on new images: load a checkpoint, predict scores, decisions and maps, thresholds.

Example::

    import patchguard.inference as pgi

    detector = pgi.load("runs/bottle/last.pt")
    result = detector.predict(["line/images", "extra/*.jpg"])
    result.scores, result.decisions, result.maps, result.paths, result.failed

Thresholds live in the checkpoint under ``thresholds`` (see :func:`calibrate_thresholds`, written
by :func:`write_thresholds` or ``patchguard calibrate``). Without an image threshold
``Prediction.decisions`` is ``None`` (never a guess); pass ``threshold=`` to decide anyway.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_checkpoint, save_checkpoint
from .data import IMAGE_EXTENSIONS, read_image, resize_image
from .model import PatchGuard

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor
_GLOB_CHARS = set("*?[")


# ---------------------------------------------------------------------------- thresholds


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


# ---------------------------------------------------------------------------- model card


def model_card(checkpoint: dict[str, Any]) -> str:
    """Human-readable summary of a checkpoint dict: model, data, weights, thresholds, results."""
    config = checkpoint.get("config", {})
    lines = ["PatchGuard checkpoint"]

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            lines.append(f"  {label:<20} {value}")

    add("patchguard version", checkpoint.get("patchguard_version"))
    add("imported from", checkpoint.get("imported_from"))
    add("backbone", config.get("backbone"))
    add("weight source", checkpoint.get("weight_source"))
    add("image size", config.get("image_size"))
    add("feature layers", config.get("feature_layers"))
    add("discriminator", f"{config.get('dsc_layers')} block(s), {config.get('dsc_heads')} heads,"
        f" hidden {config.get('dsc_hidden')}" if config else None)
    model = checkpoint.get("model")
    if isinstance(model, dict):
        params = sum(t.numel() for t in model.values() if isinstance(t, torch.Tensor))
        add("parameters", f"{params / 1e6:.2f} M")
    add("epochs completed", checkpoint.get("epoch"))
    if config:
        adv = (f"PGD eps {config.get('epsilon_train')}/255, {config.get('steps_train')} steps"
               if config.get("adv_train") else "off")
        add("adversarial train", adv)
        add("attention reg.", f"layers {config.get('reg_layers')} coefficients "
            f"{config.get('reg_coefficients')}" if config.get("reg") else "off")
        add("preset", config.get("preset"))
    summary = checkpoint.get("train_summary") or {}
    labels = {"dataset": "dataset", "class_name": "class", "n_train_images": "training images",
              "foreground_masks": "foreground masks"}
    for key, value in summary.items():
        add(labels.get(key, key.replace("_", " ")), value)
    thresholds = checkpoint.get("thresholds")
    if thresholds:
        add("image threshold", thresholds.get("image"))
        add("pixel threshold", thresholds.get("pixel"))
        method = thresholds.get("method")
        if thresholds.get("target_fpr") is not None:
            method = f"{method} (target FPR {thresholds['target_fpr']})"
        add("threshold method", method)
    else:
        add("thresholds", "none (run 'patchguard calibrate')")
    normal = checkpoint.get("normal_scores")
    if isinstance(normal, torch.Tensor) and normal.numel():
        add("normal scores", f"{normal.numel()} images, mean {float(normal.mean()):.4f}, "
            f"max {float(normal.max()):.4f}")
    results = checkpoint.get("results") or []
    if results:
        lines.append("  evaluation results:")
        for row in results:
            pixel = row.get("pixel_auroc")
            pixel_text = "n/a" if pixel is None else f"{pixel:.4f}"
            lines.append(f"    {row.get('attack', 'clean')} eps {row.get('epsilon', 0):g} "
                         f"steps {row.get('steps', 0)}: image AUROC "
                         f"{row.get('image_auroc', float('nan')):.4f}, pixel AUROC {pixel_text}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- inputs


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(
        "."
    )


def expand_inputs(
    inputs: ImageInput | Iterable[ImageInput],
) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """Expand files, folders (recursive), globs and in-memory images into (name, source) items.

    Returns the items in a stable order and the inputs that matched nothing, with a reason.
    """
    if isinstance(inputs, (str, Path, Image.Image, np.ndarray)) or (
        isinstance(inputs, torch.Tensor) and inputs.ndim == 3
    ):
        inputs = [inputs]
    items: list[tuple[str, Any]] = []
    failed: list[tuple[str, str]] = []
    counter = 0
    for entry in inputs:
        if isinstance(entry, (str, Path)):
            path = Path(entry).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if _is_image_file(p))
                if not found:
                    failed.append((str(entry), "folder holds no images "
                                   f"({', '.join(IMAGE_EXTENSIONS)})"))
                items.extend((str(p), p) for p in found)
            elif path.exists() or not (_GLOB_CHARS & set(str(entry))):
                # An explicit file is always tried, whatever its extension; a missing one fails.
                items.append((str(path), path))
            else:
                matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
                found = [p for p in matches if _is_image_file(p)]
                if not found:
                    failed.append((str(entry), "no image files match this pattern"))
                items.extend((str(p), p) for p in found)
        elif isinstance(entry, torch.Tensor) and entry.ndim == 4:
            for image in entry:
                items.append((f"<tensor {counter}>", image))
                counter += 1
        else:
            kind = "image" if isinstance(entry, Image.Image) else type(entry).__name__
            items.append((f"<{kind} {counter}>", entry))
            counter += 1
    return items, failed


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Same mode handling as :func:`patchguard.data.read_image`, for in-memory PIL images."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            span = max(float(array.max() - array.min()), 1e-12)
            array = (array - array.min()) / span * 255
        else:
            array = array / 257.0
        array = np.clip(array, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _resize_float(image: np.ndarray, size: int) -> np.ndarray:
    """LANCZOS resize of a float (H, W, 3) image without quantising it to 8 bits first."""
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
            (size, size), Image.LANCZOS))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def load_input(source: Any, size: int) -> np.ndarray:
    """One input as a float32 (size, size, 3) image in [0, 1] (LANCZOS resize, as in testing).

    Paths are read with :func:`patchguard.data.read_image`. Arrays: uint8 in [0, 255] or float in
    [0, 1]; (H, W), (H, W, 1|3|4) or channel-first (1|3, H, W). Tensors: float (3, H, W) in [0, 1].
    """
    if isinstance(source, Path):
        return resize_image(read_image(source), size).astype(np.float32) / 255.0
    if isinstance(source, Image.Image):
        return resize_image(_pil_to_rgb(source), size).astype(np.float32) / 255.0
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().float().numpy()
    if not isinstance(source, np.ndarray):
        raise TypeError(f"unsupported input type {type(source).__name__}: give a path, a PIL "
                        "image, a numpy array or a torch tensor")
    array = source
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"array of shape {source.shape} is not an image (H, W[, 1|3|4])")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        # Flatten transparency onto black, as read_image does for files.
        alpha = array[..., 3:].astype(np.float32)
        alpha = alpha / 255.0 if array.dtype == np.uint8 else alpha
        array = (array[..., :3].astype(np.float32) * alpha).astype(array.dtype)
    if array.dtype == np.uint8:
        return resize_image(np.ascontiguousarray(array), size).astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"array dtype {array.dtype}: give uint8 in [0, 255] or float in [0, 1]")
    if not np.all(np.isfinite(array)) or array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError("float images must hold finite values in [0, 1]")
    return _resize_float(np.clip(array, 0.0, 1.0), size)


# ---------------------------------------------------------------------------- detector


@dataclass
class Prediction:
    """Results for the readable inputs, in input order, and the inputs that failed."""

    scores: np.ndarray  # (n,) float32 image scores (top-k mean patch logit)
    decisions: np.ndarray | None  # (n,) bool, score >= threshold; None without a threshold
    maps: np.ndarray  # (n, H, W) float32 anomaly maps (logit scale) at the model's image size
    paths: list[str]  # file path, or "<kind i>" for in-memory inputs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    threshold: float | None = None
    pixel_threshold: float | None = None
    images: np.ndarray | None = None  # (n, H, W, 3) uint8 resized inputs, when asked for

    def __len__(self) -> int:
        return len(self.paths)

    def masks(self) -> np.ndarray:
        """Binary defect masks (n, H, W): map >= the pixel threshold."""
        if self.pixel_threshold is None:
            raise ValueError("no pixel threshold: calibrate the checkpoint ('patchguard "
                             "calibrate') or pass pixel_threshold= to predict()")
        return self.maps >= self.pixel_threshold


def _concat(parts: list[Prediction], failed: list[tuple[str, str]]) -> Prediction:
    first = parts[0]
    images = [p.images for p in parts if p.images is not None]
    decisions = [p.decisions for p in parts if p.decisions is not None]
    return Prediction(
        scores=np.concatenate([p.scores for p in parts]),
        decisions=np.concatenate(decisions) if decisions else None,
        maps=np.concatenate([p.maps for p in parts]),
        paths=[path for p in parts for path in p.paths],
        failed=failed,
        threshold=first.threshold,
        pixel_threshold=first.pixel_threshold,
        images=np.concatenate(images) if images else None,
    )


class Detector:
    """A loaded PatchGuard model with its thresholds, ready to predict on new images."""

    def __init__(
        self,
        model: PatchGuard,
        checkpoint: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        # Keep the metadata, not a second copy of the weights (or the optimizer state).
        self.info = {k: v for k, v in (checkpoint or {}).items()
                     if k not in ("model", "optimizer", "scheduler", "rng")}
        thresholds = self.info.get("thresholds") or {}
        self.threshold: float | None = thresholds.get("image")
        self.pixel_threshold: float | None = thresholds.get("pixel")

    @property
    def image_size(self) -> int:
        """Side in pixels that inputs are resized to, and of the anomaly maps."""
        return int(self.model.image_size)

    def card(self) -> str:
        """The checkpoint's model card."""
        return model_card(self.info)

    def predict_batches(
        self,
        images_or_paths: ImageInput | Iterable[ImageInput],
        batch_size: int = 16,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
        keep_images: bool = False,
        progress: bool = False,
    ) -> Iterator[Prediction]:
        """Like :meth:`predict`, but yield one :class:`Prediction` per batch (bounded memory).

        Each batch's ``failed`` holds the inputs that failed since the previous batch (the last
        yielded item carries the remainder; an all-failed run yields one empty Prediction).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        image_threshold = self.threshold if threshold is None else float(threshold)
        map_threshold = self.pixel_threshold if pixel_threshold is None else float(pixel_threshold)
        items, failed = expand_inputs(images_or_paths)
        size = self.image_size
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), disable=not progress, unit="img", desc="predict")
        batch_names: list[str] = []
        batch_images: list[np.ndarray] = []
        yielded = False

        def run() -> Prediction:
            batch = torch.from_numpy(np.stack(batch_images)).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                scores, maps = self.model.predict(batch.to(self.device))
            scores_np = scores.float().cpu().numpy()
            result = Prediction(
                scores=scores_np,
                decisions=(None if image_threshold is None
                           else scores_np.astype(np.float64) >= image_threshold),
                maps=maps.float().cpu().numpy(),
                paths=list(batch_names),
                failed=list(failed),
                threshold=image_threshold,
                pixel_threshold=map_threshold,
                images=(np.round(np.stack(batch_images) * 255).astype(np.uint8)
                        if keep_images else None),
            )
            failed.clear()
            batch_names.clear()
            batch_images.clear()
            return result

        try:
            for name, source in items:
                try:
                    image = load_input(source, size)
                except Exception as error:  # a bad input is reported, never fatal to the run
                    failed.append((name, str(error)))
                else:
                    batch_names.append(name)
                    batch_images.append(image)
                bar.update(1)
                if len(batch_images) == batch_size:
                    yielded = True
                    yield run()
            if batch_images:
                yielded = True
                yield run()
            if failed or not yielded:
                yield Prediction(
                    scores=np.zeros(0, np.float32),
                    decisions=None if image_threshold is None else np.zeros(0, bool),
                    maps=np.zeros((0, size, size), np.float32), paths=[], failed=list(failed),
                    threshold=image_threshold, pixel_threshold=map_threshold,
                    images=np.zeros((0, size, size, 3), np.uint8) if keep_images else None,
                )
        finally:
            bar.close()

    def predict(
        self,
        images_or_paths: ImageInput | Iterable[ImageInput],
        batch_size: int = 16,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
        keep_images: bool = False,
        progress: bool = False,
    ) -> Prediction:
        """Scores, decisions and anomaly maps for files, folders, globs or in-memory images.

        Args:
            images_or_paths: one input or an iterable of them: image file paths, folders
                (searched recursively for common image formats), glob patterns (``**``
                allowed), PIL images, uint8 / float-in-[0, 1] numpy arrays, float tensors.
            batch_size: images per forward pass.
            threshold: image threshold overriding the checkpoint's.
            pixel_threshold: pixel threshold overriding the checkpoint's (for ``masks()``).
            keep_images: also return the resized uint8 inputs (``Prediction.images``).
            progress: show a progress bar.

        Unreadable or truncated inputs are listed in ``Prediction.failed`` as (path, reason);
        they never raise. ``decisions`` is None when there is no image threshold.
        """
        parts = list(self.predict_batches(images_or_paths, batch_size, threshold,
                                          pixel_threshold, keep_images, progress))
        failed = [entry for part in parts for entry in part.failed]
        return _concat(parts, failed)


def load(checkpoint: str | Path, device: str | torch.device = "auto") -> Detector:
    """Load a patchguard checkpoint (weights_only) as a :class:`Detector` in eval mode."""
    from .training import load_model, resolve_device

    torch_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model, state = load_model(checkpoint, torch_device)
    return Detector(model, state, torch_device)
