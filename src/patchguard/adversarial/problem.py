"""Machinery shared by the evaluation attacks: one attack problem (model, clean images, objective
inputs) with its losses, input gradients, projection, and per-image best-point tracking.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .objectives import PerImageObjective, resolve_objective
from .pgd import input_gradients_only

# An attack's result: adversarial images (B, C, H, W) and the per-image objective (B,) at them.
AttackResult = tuple[torch.Tensor, torch.Tensor]


class AttackProblem:
    """One attack problem: model, clean images, objective inputs; gives losses and gradients."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        labels: torch.Tensor | None,
        epsilon: float,
        objective: str | PerImageObjective,
        masks: torch.Tensor | None,
    ) -> None:
        self.model = model
        self.original = images.detach()
        self.targets = targets.detach().to(images.device).float()
        if labels is None:  # an image with any anomalous patch is anomalous
            labels = self.targets.flatten(1).amax(dim=1)
        self.labels = torch.as_tensor(labels, device=images.device).detach().float()
        self.masks = None if masks is None else masks.detach().to(images.device)
        self.epsilon = float(epsilon)
        self.objective = resolve_objective(objective)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` (gradients flow if ``x`` requires them)."""
        logits = self.model(x, with_attention=False).logits.float()
        return self.objective(self.model, logits, self.targets, self.labels, self.masks)

    def loss_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and its input gradient; parameter ``.grad`` is never touched."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), input_gradients_only(self.model):
            loss = self.loss(x)
            # Images are independent, so the gradient of the sum is each image's own gradient.
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto the epsilon ball around the clean images, intersected with [0, 1]."""
        delta = (x - self.original).clamp(-self.epsilon, self.epsilon)
        return (self.original + delta).clamp(0.0, 1.0)

    def random_start(self, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform random point of the epsilon ball (clipped to [0, 1])."""
        device = generator.device if generator is not None else self.original.device
        noise = torch.rand(self.original.shape, generator=generator, device=device)
        noise = noise.to(self.original.device, self.original.dtype)
        return self.project(self.original + (2.0 * noise - 1.0) * self.epsilon)

    @torch.no_grad()
    def final_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` in eval mode, so results of different attacks compare."""
        with eval_mode(self.model):
            return self.loss(x).detach()

    def keep_best(
        self, best_x: torch.Tensor | None, best_loss: torch.Tensor | None, x: torch.Tensor
    ) -> AttackResult:
        """Per image, keep ``x`` (scored by :meth:`final_loss`) where it beats the best so far."""
        loss = self.final_loss(x)
        if best_x is None or best_loss is None:
            return x.detach(), loss
        better = loss > best_loss
        return torch.where(better.view(-1, 1, 1, 1), x, best_x), torch.where(
            better, loss, best_loss)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode, restoring each one's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.train(flag)


def update_best(
    best_x: torch.Tensor, best_loss: torch.Tensor, x: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image best point tracking on the device (strict improvement replaces)."""
    better = loss > best_loss
    return torch.where(better.view(-1, 1, 1, 1), x, best_x), torch.where(better, loss, best_loss)
