"""Held-out normal images: the validation split, the overfitting probe's fixed images and the
decision thresholds set on them when training ends."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.datasets import TestDataset, TrainDataset
from ..data.pseudo_anomaly import PseudoAnomalyGenerator
from ..evaluation.evaluator import predict_dataset
from ..inference.thresholds import calibrate_thresholds
from ..models.patchguard import PatchGuard, patch_targets
from .probe import OverfittingProbe

logger = logging.getLogger(__name__)


def probe_images(
    records: list, val_records: list, config: TrainConfig, generator: PseudoAnomalyGenerator,
    patch_size: int, device: torch.device,
) -> OverfittingProbe:
    """The overfitting probe on fixed images: the held-out normal images (else the first 8
    training images, then not held out) and two pseudo anomalies of each, drawn with a seed of
    their own."""
    chosen = val_records or records[:8]
    if not val_records:
        logger.warning("--probe-every without held-out images (--val-fraction 0): the probe "
                       "uses %d training images", len(chosen))
    probe_set = TrainDataset(chosen, config.image_size, generator, config.seed + 7919,
                             progress=False)
    samples = [probe_set[(epoch, i)] for epoch in (0, 1) for i in range(len(probe_set))]
    normal = torch.stack([s["image"] for s in samples[: len(probe_set)]]).to(device)
    pseudo = torch.stack([s["pseudo_image"] for s in samples]).to(device)
    masks = torch.stack([s["pseudo_mask"] for s in samples]).to(device)
    return OverfittingProbe(normal, pseudo, patch_targets(masks, patch_size),
                            config.epsilon_train / 255.0)


def split_validation(
    records: list, fraction: float, seed: int
) -> tuple[list, list]:
    """Hold out ``fraction`` of the training records (at least one when > 0), fixed by seed."""
    if fraction <= 0:
        return list(records), []
    count = max(1, round(len(records) * fraction))
    if count >= len(records):
        raise ValueError(f"val_fraction {fraction} leaves no training images of {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))
    held = set(order[:count].tolist())
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def validation_thresholds(
    model: PatchGuard, records: list, config: TrainConfig, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Score held-out normal images; return their scores and thresholds at the target FPR."""
    preds = predict_dataset(model, TestDataset(records, config.image_size), 0.0,
                            batch_size=config.batch_size, device=device, progress=progress,
                            desc="scoring held-out normal images")
    thresholds = calibrate_thresholds(preds.scores, target_fpr=config.target_fpr,
                                      normal_pixel_values=preds.maps.ravel(), method="auto")
    logger.info("thresholds from %d held-out normal images at FPR %.3g: image %.4f (%s)",
                len(records), config.target_fpr, thresholds["image"], thresholds["method"])
    return {"thresholds": thresholds,
            "normal_scores": torch.as_tensor(preds.scores, dtype=torch.float32)}
