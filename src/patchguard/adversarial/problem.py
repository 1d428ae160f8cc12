"""Machinery shared by the evaluation attacks: one attack problem (detector, clean images,
objective inputs) with its losses, input gradients, projection and per-image best-point tracking,
and the budget every attack takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .ascent import input_gradients_only, project_linf
from .attackable import AttackableDetector, as_detector, eval_mode
from .names import DEFAULT_QUERIES
from .objectives import PerImageObjective, needs_patch_logits, resolve_objective

# An attack's result: adversarial images (B, C, H, W) and the per-image objective (B,) at them.
AttackResult = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class AttackBudget:
    """How much an attack may do: gradient ``steps``, random ``restarts``, model ``queries``
    (score-based attacks), the ``generator`` of its random numbers and, for ``worst`` and
    ``standard``, the ``members`` it takes the worst case over (attack names for ``worst``,
    ``standard.Member`` budgets for ``standard``; None: the default members)."""

    steps: int = 10
    restarts: int = 1
    queries: int = DEFAULT_QUERIES
    generator: torch.Generator | None = None
    members: tuple[Any, ...] | None = None
    # standard only: one generator per member (see standard.member_generators).
    member_generators: dict[Any, torch.Generator] | None = None


class AttackProblem:
    """One attack problem: detector, clean images, objective inputs; gives losses and gradients.

    ``detector`` is anything :func:`.attackable.as_detector` accepts. ``targets`` (B, N) are patch
    targets (1 = anomalous patch) or None for a detector without patch logits; ``labels`` (B,)
    are 0 normal / 1 anomalous (None: derived from ``targets``).
    """

    def __init__(
        self,
        detector: object,
        images: torch.Tensor,
        targets: torch.Tensor | None,
        labels: torch.Tensor | None,
        epsilon: float,
        objective: str | PerImageObjective,
        masks: torch.Tensor | None,
    ) -> None:
        self.detector: AttackableDetector = as_detector(detector)
        self.original = images.detach()
        device = images.device
        self.targets = None if targets is None else targets.detach().to(device).float()
        if labels is None:  # an image with any anomalous patch is anomalous
            if self.targets is None:
                raise ValueError("an attack needs image labels or patch targets")
            labels = self.targets.flatten(1).amax(dim=1)
        self.labels = torch.as_tensor(labels, device=device).detach().float()
        self.masks = None if masks is None else masks.detach().to(device)
        self.epsilon = float(epsilon)
        self.objective_name = objective if isinstance(objective, str) else None
        self.objective = resolve_objective(objective)
        # Exact early stopping (standard only, see .early_stop): which images are still
        # attacked; None attacks every image to the full budget.
        self.stop: Any = None
        self.passes = [0]  # images sent through the detector, shared by derived problems
        # The clean images' scores when the clean pass already computed them (B,) or None.
        self.clean_scores: torch.Tensor | None = None
        if needs_patch_logits(objective) and not self.supports_patch_objectives:
            raise ValueError("the mask objective needs a detector with patch logits and patch "
                             "targets; use the score or map objective")

    @property
    def supports_patch_objectives(self) -> bool:
        """Whether the ``mask`` objective can be computed (patch logits and patch targets)."""
        return self.detector.has_patch_logits and self.targets is not None

    def with_objective(self, objective: str | PerImageObjective) -> AttackProblem:
        """The same problem (detector, images, targets, labels, masks) with another objective."""
        problem = AttackProblem(self.detector, self.original, self.targets, self.labels,
                                self.epsilon, objective, self.masks)
        problem.stop, problem.passes = self.stop, self.passes
        problem.clean_scores = self.clean_scores
        return problem

    def rows(self, index: torch.Tensor) -> AttackProblem:
        """The problem of the images ``index`` (a long tensor) alone, counting its passes here."""
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        problem = AttackProblem(self.detector, self.original[index], pick(self.targets),
                                self.labels[index], self.epsilon, self.objective,
                                pick(self.masks))
        problem.objective_name, problem.passes = self.objective_name, self.passes
        return problem

    def active(self) -> torch.Tensor | None:
        """Indices of the images still attacked, or None when every image is."""
        if self.stop is None or bool(self.stop.active.all()):
            return None
        return self.stop.active.nonzero().squeeze(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` (gradients flow if ``x`` requires them)."""
        self.passes[0] += x.shape[0]
        return self.objective(self.detector(x), self.targets, self.labels, self.masks)

    def loss_and_grad_active(self, x: torch.Tensor, fill: torch.Tensor | float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_and_grad` of the images still attacked; ``fill`` as the loss and a zero
        gradient (no step) for the others, whose results can no longer change a metric."""
        index = self.active()
        if index is None:
            return self.loss_and_grad(x)
        loss = torch.full_like(self.labels, fill) if isinstance(fill, float) else fill.clone()
        grad = torch.zeros_like(x)
        if len(index):
            part_loss, part_grad = self.rows(index).loss_and_grad(x[index])
            loss[index], grad[index] = part_loss, part_grad
        return loss, grad

    @torch.no_grad()
    def loss_active(self, x: torch.Tensor, fill: float = -math.inf) -> torch.Tensor:
        """The eval-mode loss of the images still attacked; ``fill`` for the others."""
        index = self.active()
        if index is None:
            return self.final_loss(x)
        loss = torch.full_like(self.labels, fill)
        if len(index):
            loss[index] = self.rows(index).final_loss(x[index])
        return loss

    def loss_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and its input gradient; parameter ``.grad`` is never touched."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), input_gradients_only(self.detector):
            loss = self.loss(x)
            # Images are independent, so the gradient of the sum is each image's own gradient.
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto the epsilon ball around the clean images, intersected with [0, 1]."""
        return project_linf(x, self.original, self.epsilon)

    def random_start(self, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform random point of the epsilon ball (clipped to [0, 1])."""
        noise = uniform(self.original.shape, generator, self.original)
        return self.project(self.original + (2.0 * noise - 1.0) * self.epsilon)

    @torch.no_grad()
    def final_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` in eval mode, so results of different attacks compare."""
        with eval_mode(self.detector):
            return self.loss(x).detach()

    @torch.no_grad()
    def values(self, x: torch.Tensor, objectives: Sequence[str | PerImageObjective]
               ) -> list[torch.Tensor]:
        """Per-image values (B,) of each objective at ``x``, in eval mode, from one pass."""
        self.passes[0] += x.shape[0]
        with eval_mode(self.detector):
            output = self.detector(x)
            return [resolve_objective(o)(output, self.targets, self.labels, self.masks)
                    for o in objectives]

    def unchanged(self) -> AttackResult:
        """The clean images and their eval-mode loss: the result of a zero budget."""
        return self.keep_best(None, None, self.original.clone())

    def keep_best(
        self, best_x: torch.Tensor | None, best_loss: torch.Tensor | None, x: torch.Tensor
    ) -> AttackResult:
        """Per image, keep ``x`` (scored by :meth:`final_loss`) where it beats the best so far."""
        loss = self.final_loss(x)
        if best_x is None or best_loss is None:
            return x.detach(), loss
        return update_best(best_x, best_loss, x, loss)


def uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
            like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn by ``generator`` (on its own device), moved next to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.rand(tuple(shape), generator=generator, device=device).to(like.device,
                                                                          like.dtype)


def update_best(
    best_x: torch.Tensor, best_loss: torch.Tensor, x: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image best point tracking on the device (strict improvement replaces)."""
    better = loss > best_loss
    return torch.where(better.view(-1, 1, 1, 1), x, best_x), torch.where(better, loss, best_loss)
