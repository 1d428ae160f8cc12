"""The detector: a loaded checkpoint that predicts scores, decisions and maps for new images.

Example::

    import patchguard.inference.detector as pgi

    detector = pgi.load("runs/bottle/last.pt")
    result = detector.predict(["line/images", "extra/*.jpg"])
    result.scores, result.decisions, result.maps, result.paths, result.failed

Thresholds live in the checkpoint under ``thresholds`` (computed by
:func:`.thresholds.calibrate_thresholds`, written by :func:`.thresholds.write_thresholds` or
``patchguard calibrate``); what follows from them (decisions, masks, heatmap colours) is the
model's :class:`~patchguard.models.postprocess.PostProcessor`. Without an image threshold
``Prediction.decisions`` is ``None`` (never a guess); pass ``threshold=`` to decide anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.factory import load_model
from ..models.patchguard import PatchGuard
from ..models.postprocess import PostProcessor
from ..utils import checks
from ..utils.device import resolve_device
from .card import model_card
from .inputs import ImageInput, expand_inputs, load_input


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

    @property
    def post(self) -> PostProcessor:
        """The thresholds these results were decided with, and their heatmap colours."""
        return PostProcessor(self.threshold, self.pixel_threshold)

    def masks(self) -> np.ndarray:
        """Binary defect masks (n, H, W): map >= the pixel threshold."""
        return self.post.masks(self.maps)


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
        self.post = PostProcessor.from_checkpoint(self.info)

    @property
    def threshold(self) -> float | None:
        """The image threshold (score >= it is anomalous), or None."""
        return self.post.image_threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self.post = PostProcessor(None if value is None else float(value),
                                  self.post.pixel_threshold)

    @property
    def pixel_threshold(self) -> float | None:
        """The pixel threshold (map >= it is a defect pixel), or None."""
        return self.post.pixel_threshold

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
        # The checks of the command line's --batch-size, --threshold and --pixel-threshold.
        checks.integer("batch_size (--batch-size)", batch_size, 1)
        if threshold is not None:
            threshold = checks.number("threshold (--threshold)", threshold)
        if pixel_threshold is not None:
            pixel_threshold = checks.number("pixel_threshold (--pixel-threshold)",
                                            pixel_threshold)
        post = self.post.overridden(threshold, pixel_threshold)
        image_threshold, map_threshold = post.image_threshold, post.pixel_threshold
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
                decisions=post.decide(scores_np),
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

        Returns:
            A ``Prediction`` of the readable inputs in input order: ``scores``,
                ``decisions`` (None when there is no image threshold), ``maps``, ``paths``, and
                ``failed``, the unreadable or truncated inputs as (path, reason); they never raise.

        Example:
            ```python
            detector = patchguard.load("runs/bottle/last.pt")
            result = detector.predict(["part_001.png", "line_images/"])
            flagged = [p for p, d in zip(result.paths, result.decisions) if d]
            ```
        """
        parts = list(self.predict_batches(images_or_paths, batch_size, threshold,
                                          pixel_threshold, keep_images, progress))
        failed = [entry for part in parts for entry in part.failed]
        return _concat(parts, failed)


def load(checkpoint: str | Path, device: str | torch.device = "auto") -> Detector:
    """Load a patchguard checkpoint (weights_only) as a :class:`Detector` in eval mode.

    Args:
        checkpoint: a patchguard checkpoint (``last.pt``).
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, or a torch device.

    Returns:
        A ``Detector`` with the checkpoint's image and pixel thresholds.

    Example:
        ```python
        detector = patchguard.load("runs/bottle/last.pt")
        print(detector.card())
        ```
    """
    torch_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model, state = load_model(checkpoint, torch_device)
    return Detector(model, state, torch_device)
