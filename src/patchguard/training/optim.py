"""The optimiser and learning-rate schedule of docs/method.md, section 3 (plus an optional
backbone lr and warm-up).
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..models.patchguard import PatchGuard


def build_optimizer(model: PatchGuard, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the backbone and the discriminator in separate parameter groups."""
    backbone_lr = config.lr if config.backbone_lr is None else config.backbone_lr
    groups = [
        {"params": model.backbone_parameters(), "lr": backbone_lr, "name": "backbone"},
        {"params": model.head_parameters(), "lr": config.lr, "name": "discriminator"},
    ]
    if backbone_lr == 0:
        for parameter in groups[0]["params"]:
            parameter.requires_grad_(False)
        groups = groups[1:]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """LR multiplier: optional linear warm-up, then per-epoch cosine decay to min_lr_ratio."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    # Piecewise constant per epoch, like the original's CosineAnnealingLR stepped every epoch.
    epoch = step // max(steps_per_epoch, 1)
    progress = min(epoch / max(config.epochs, 1), 1.0)
    ratio = config.min_lr_ratio
    return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR over :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, config)
    )
