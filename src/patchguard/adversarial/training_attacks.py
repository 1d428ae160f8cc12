"""The faithful training-time PGD of the paper (docs/method.md, section 4) and the single-step
training attacks (FGSM with a random start, N-FGSM), on the patch logits of a PatchGuard-like
model. The PGD loop itself is shared with the evaluation (:mod:`.ascent`).

The faithful PGD is kept exactly as the original: step size 2.5 * eps / steps, no random
start, signed gradient ascent, the last iterate; only input gradients are taken.
"""

from __future__ import annotations

import torch
from torch import nn

from .ascent import LossAndGrad, input_gradients_only, signed_gradient_ascent
from .objectives import Objective, mask_objective


def logit_loss_and_grad(model: nn.Module, targets: torch.Tensor, objective: Objective,
                        autocast_dtype: torch.dtype | None = None) -> LossAndGrad:
    """Training-time ``x -> (summed objective on patch logits, its input gradient)``, the
    forward in the model's own train/eval mode (bf16 autocast when ``autocast_dtype``).
    Call it inside :func:`input_gradients_only`."""

    def loss_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = model(x, with_attention=False).logits
        loss = objective(logits.float(), targets)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad.detach()

    return loss_and_grad


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    steps: int,
    alpha: float | None = None,
    objective: Objective = mask_objective,
    autocast_dtype: torch.dtype | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return PGD-perturbed images within ``epsilon`` (pixel units in [0, 1]) of ``images``.

    Faithful to the original: step size 2.5 * eps / steps, no random start, signed gradient
    ascent on the objective (:func:`signed_gradient_ascent`, the loop the evaluation's ``pgd``
    runs too). Only the input gradient is computed, so the model's parameter gradients stay
    untouched. The model's train/eval mode is left as the caller set it. ``start`` (a
    perturbation, e.g. carried over from an earlier epoch) replaces the clean starting point;
    without it the run is the faithful one.
    """
    if epsilon <= 0 or steps <= 0:
        return images.detach().clone()
    if alpha is None:
        alpha = 2.5 * epsilon / steps
    original = images.detach()
    adversarial = original.clone()
    if start is not None:
        adversarial = (original + start.to(original).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
    with input_gradients_only(model):
        adversarial = signed_gradient_ascent(
            logit_loss_and_grad(model, targets, objective, autocast_dtype), original,
            adversarial, epsilon, alpha, steps)
    return adversarial.detach()


def input_gradient(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    objective: Objective = mask_objective,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gradient of the summed ``objective`` with respect to ``images`` (parameters frozen)."""
    with input_gradients_only(model):
        return logit_loss_and_grad(model, targets, objective, autocast_dtype)(images)[1]


def uniform_noise(images: torch.Tensor, radius: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise in [-radius, radius] of the images' shape (drawn on the CPU when a CPU
    generator is given, so draws do not depend on the device)."""
    device = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=device)
    return (2.0 * noise.to(images.device, images.dtype) - 1.0) * radius


def _gradient_sign_at(model: nn.Module, original: torch.Tensor, delta: torch.Tensor,
                      targets: torch.Tensor, objective: Objective,
                      autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """The single-step attacks' direction: the sign of the input gradient at ``original +
    delta`` clipped to [0, 1]; each attack scales and projects it its own way."""
    return input_gradient(model, (original + delta).clamp(0.0, 1.0), targets, objective,
                          autocast_dtype).sign()


def fgsm_rs_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    objective: Objective = mask_objective,
    alpha: float | None = None,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """FGSM with a random start (Wong et al. 2020): delta ~ U(-eps, eps) (or ``start``), one
    signed step of ``alpha`` (1.25 eps), projected back to the eps ball and to [0, 1]."""
    original = images.detach()
    if epsilon <= 0:
        return original.clone()
    alpha = 1.25 * epsilon if alpha is None else alpha
    delta = (uniform_noise(original, epsilon, generator) if start is None
             else start.to(original).clamp(-epsilon, epsilon))
    sign = _gradient_sign_at(model, original, delta, targets, objective, autocast_dtype)
    delta = (delta + alpha * sign).clamp(-epsilon, epsilon)
    return (original + delta).clamp(0.0, 1.0)


def nfgsm_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    objective: Objective = mask_objective,
    noise: float | None = None,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022): noise U(-2 eps, 2 eps), one signed step of eps, and no
    projection back to the eps ball (so ||delta||_inf <= 3 eps); only [0, 1] is enforced."""
    original = images.detach()
    if epsilon <= 0:
        return original.clone()
    noise = 2.0 * epsilon if noise is None else noise
    alpha = epsilon if alpha is None else alpha
    delta = uniform_noise(original, noise, generator)
    sign = _gradient_sign_at(model, original, delta, targets, objective, autocast_dtype)
    return (original + delta + alpha * sign).clamp(0.0, 1.0)
