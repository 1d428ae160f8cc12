"""The evaluation attacks, L-infinity on input pixels, and their registry :data:`ATTACKS`.

Every attack shares the signature (model, images, targets, labels, epsilon, steps, *, objective,
restarts, masks, generator) -> (adversarial images, per-image final loss), takes a per-image
objective (:data:`.objectives.OBJECTIVES`) so that the best point can be tracked per image, and
reports the objective in eval mode so that results of different attacks compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .apgd import attack_apgd
from .objectives import PerImageObjective
from .pgd import pgd_attack
from .problem import AttackProblem, AttackResult, update_best


def attack_pgd(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Faithful METHOD.md PGD (step 2.5 eps / steps, no random start, last iterate)."""
    problem = AttackProblem(model, images, targets, labels, epsilon, objective, masks)

    def summed(logits: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        return problem.objective(model, logits, batch_targets, problem.labels, problem.masks).sum()

    adversarial = pgd_attack(model, images, problem.targets, epsilon, steps, objective=summed)
    return adversarial, problem.final_loss(adversarial)


def attack_pgd_rs(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """PGD from uniform random starts with ``restarts`` runs; per image the best iterate of all."""
    problem = AttackProblem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0 or steps <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    alpha = 2.5 * epsilon / steps
    best_x = best_loss = None
    for _ in range(max(1, restarts)):
        x = problem.random_start(generator)
        run_x, run_loss = x, torch.full_like(problem.labels, -math.inf)
        for _ in range(steps):
            loss, grad = problem.loss_and_grad(x)
            run_x, run_loss = update_best(run_x, run_loss, x, loss)
            x = problem.project(x + alpha * grad.sign())
        with torch.no_grad():  # the last iterate is a candidate too
            run_x, run_loss = update_best(run_x, run_loss, x, problem.loss(x))
        # Across restarts compare with the same eval-mode loss that is reported, so more
        # restarts can never report a lower loss.
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def attack_fgsm(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """FGSM: one signed-gradient step of size epsilon from the clean images (``steps`` unused)."""
    problem = AttackProblem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    _, grad = problem.loss_and_grad(problem.original)
    adversarial = problem.project(problem.original + epsilon * grad.sign())
    return adversarial, problem.final_loss(adversarial)


DEFAULT_WORST_MEMBERS = ("pgd", "apgd", "pgd-rs")


def attack_worst(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    members: Sequence[str] = DEFAULT_WORST_MEMBERS,
) -> AttackResult:
    """Run each member attack in turn; per image keep the result with the highest eval loss."""
    if not members or "worst" in members:
        raise ValueError(f"worst needs member attacks other than itself, got {list(members)}")
    best_x = best_loss = None
    for name in members:
        x, loss = _lookup(name)(model, images, targets, labels, epsilon, steps,
                                objective=objective, restarts=restarts, masks=masks,
                                generator=generator)
        if best_x is None or best_loss is None:
            best_x, best_loss = x, loss
        else:  # every member reports the same eval-mode objective, so losses compare directly
            best_x, best_loss = update_best(best_x, best_loss, x, loss)
    return best_x, best_loss


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "pgd": attack_pgd,
    "pgd-rs": attack_pgd_rs,
    "fgsm": attack_fgsm,
    "apgd": attack_apgd,
    "worst": attack_worst,
}


def _lookup(name: str) -> Callable[..., AttackResult]:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: choose from {sorted(ATTACKS)}")
    return ATTACKS[name]


def run_attack(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    members: Sequence[str] | None = None,
) -> AttackResult:
    """Run attack ``name`` (see ``ATTACKS``); return adversarial images and per-image final loss.

    ``epsilon`` is in [0, 1] pixel units; ``labels`` (B,) are 0 normal / 1 anomalous (None:
    derived from ``targets``); ``masks`` are (B, [1,] H, W) ground-truth masks or None;
    ``members`` only applies to ``worst``. The final loss is the objective in eval mode.
    """
    attack = _lookup(name)
    kwargs = {}
    if members is not None:
        if name != "worst":
            raise ValueError(f"members only apply to the 'worst' attack, not {name!r}")
        kwargs["members"] = tuple(members)
    return attack(model, images, targets, labels, epsilon, steps, objective=objective,
                  restarts=restarts, masks=masks, generator=generator, **kwargs)
