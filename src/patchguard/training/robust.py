"""Training options beyond the paper's PGD (issue 12): the attack budget of each step (epsilon
ramp, more steps late in training), perturbations carried over between epochs, frozen blocks.

The training attacks themselves live in :mod:`patchguard.adversarial.training_attacks` and are
chosen in :mod:`patchguard.training.task` (free adversarial training is an entry of its own there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..utils.checks import InputError


@dataclass(frozen=True)
class AdvSchedule:
    """The attack budget of one training step: epsilon in [0, 1] pixel units and PGD steps."""

    epsilon: float
    steps: int


def adv_schedule(config: TrainConfig, step: int, total_steps: int) -> AdvSchedule:
    """Epsilon ramped linearly from 0 over the first ``eps_ramp`` share of the optimiser steps,
    then ``epsilon_train``; ``late_steps_train`` attack steps in the last ``late_fraction``.

    With ``eps_ramp`` 0 and ``late_steps_train`` 0 (the paper) every step gets
    ``epsilon_train / 255`` and ``steps_train``.
    """
    epsilon = config.epsilon_train / 255.0
    progress = step / max(total_steps, 1)
    if config.eps_ramp > 0 and progress < config.eps_ramp:
        epsilon *= min(1.0, (step + 1) / (config.eps_ramp * total_steps))
    steps = config.steps_train
    if config.late_steps_train and progress >= 1.0 - config.late_fraction:
        steps = config.late_steps_train
    return AdvSchedule(epsilon, steps)


class PerturbationBank:
    """Each training image's last clean-view perturbation, the start of its next attack.

    The clean images repeat every epoch (the pseudo anomalies are drawn anew), so their
    perturbation can keep growing across epochs, as in free adversarial training. Kept on the
    device, not in checkpoints: a resumed run starts its perturbations from zero again.
    """

    def __init__(self, n_images: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.deltas = torch.zeros((n_images, *shape), device=device)

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """Stored perturbations of these images (zeros before their first attack)."""
        return self.deltas[index.to(self.deltas.device)]

    def put(self, index: torch.Tensor, adversarial: torch.Tensor, clean: torch.Tensor) -> None:
        """Remember ``adversarial - clean`` for these images."""
        self.deltas[index.to(self.deltas.device)] = (adversarial - clean).detach().to(
            self.deltas.dtype)


def freeze_blocks(model: nn.Module, frozen_blocks: int) -> list[nn.Parameter]:
    """Freeze the patch and position embeddings and the first ``frozen_blocks`` ViT blocks;
    return the frozen parameters (the optimiser skips them: they get no gradient)."""
    if frozen_blocks <= 0:
        return []
    vit = model.feature_extractor.pretrained_model
    if frozen_blocks > len(vit.blocks):
        raise InputError("frozen_blocks (--frozen-blocks)", frozen_blocks,
                         f"must be at most the backbone's {len(vit.blocks)} blocks")
    frozen = [*vit.patch_embed.parameters()]
    for block in vit.blocks[:frozen_blocks]:
        frozen.extend(block.parameters())
    for name in ("pos_embed", "cls_token", "reg_token"):
        parameter = getattr(vit, name, None)
        if isinstance(parameter, nn.Parameter):
            frozen.append(parameter)
    for parameter in frozen:
        parameter.requires_grad_(False)
    return frozen
