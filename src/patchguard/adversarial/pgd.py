"""The faithful PGD of METHOD.md section 4, used for adversarial training and as the paper's attack.

Kept exactly as the original: step size 2.5 * eps / steps, no random start, signed gradient
ascent, the last iterate; only input gradients are taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .objectives import Objective, mask_objective


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    steps: int,
    alpha: float | None = None,
    objective: Objective = mask_objective,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return PGD-perturbed images within ``epsilon`` (pixel units in [0, 1]) of ``images``.

    Faithful to the original: step size 2.5 * eps / steps, no random start, signed gradient
    ascent on the objective. Only the input gradient is computed, so the model's parameter
    gradients stay untouched. The model's train/eval mode is left as the caller set it.
    """
    if epsilon <= 0 or steps <= 0:
        return images.detach().clone()
    if alpha is None:
        alpha = 2.5 * epsilon / steps
    original = images.detach()
    adversarial = original.clone()
    device_type = images.device.type
    with input_gradients_only(model):
        for _ in range(steps):
            adversarial.requires_grad_(True)
            with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                logits = model(adversarial, with_attention=False).logits
            loss = objective(logits.float(), targets)
            (grad,) = torch.autograd.grad(loss, adversarial)
            with torch.no_grad():
                step = adversarial + alpha * grad.sign()
                adversarial = original + (step - original).clamp(-epsilon, epsilon)
                adversarial = adversarial.clamp(0.0, 1.0)
    return adversarial.detach()


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of the model's parameters inside the block, then restore it.

    Every attack needs only the input gradient. With frozen parameters autograd records no
    weight-gradient edges and keeps no activations for them (less work and memory), and the
    oneDNN linears of :mod:`patchguard.models.kernels` skip their weight-gradient GEMMs, which
    an autograd function cannot otherwise know to be unwanted. Parameters that were already
    frozen stay frozen.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
