"""Auto-PGD (Croce & Hein 2020), L-infinity, with per-image step sizes and restarts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from .objectives import PerImageObjective
from .problem import AttackProblem, AttackResult, update_best

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD checkpoint iterations w_j = ceil(p_j * steps), distinct and ascending.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1.
    """
    # Exact fractions: in floats e.g. 0.22 + 0.19 = 0.41000000000000003, whose ceil(* 100) is 42.
    previous, current = Fraction(0), Fraction(22, 100)
    points = [Fraction(0)]
    while current <= 1:
        points.append(current)
        previous, current = current, current + max(
            current - previous - Fraction(3, 100), Fraction(6, 100))
    return sorted({math.ceil(p * steps) for p in points})


def attack_apgd(
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
    """Auto-PGD (Croce & Hein 2020), L-infinity, per-image step sizes; best over restarts.

    Step size starts at 2 eps; momentum 0.75; at each checkpoint an image's step size is halved
    and it restarts from its best point if fewer than 75 % of the steps since the last checkpoint
    raised its loss, or if its step size was not reduced at the last checkpoint and its best loss
    has not improved since. Every restart begins at a uniform random point of the ball.
    """
    problem = AttackProblem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0 or steps <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    checkpoints = apgd_checkpoints(steps)
    best_x = best_loss = None
    for _ in range(max(1, restarts)):
        run_x, _ = _apgd_run(problem, steps, checkpoints, problem.random_start(generator))
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def _apgd_run(
    problem: AttackProblem, steps: int, checkpoints: Sequence[int], start: torch.Tensor
) -> AttackResult:
    """One APGD run of ``steps`` gradient steps from ``start``; returns the best point and loss."""
    batch = start.shape[0]
    view = (-1, 1, 1, 1)
    eta = torch.full((batch,), 2.0 * problem.epsilon, device=start.device, dtype=start.dtype)
    x = x_previous = start
    best_x, best_grad = start, torch.zeros_like(start)
    best_loss = torch.full((batch,), -math.inf, device=start.device)
    loss_previous = best_loss
    successes = torch.zeros(batch, device=start.device)
    best_at_checkpoint = best_loss
    reduced_at_checkpoint = torch.zeros(batch, dtype=torch.bool, device=start.device)
    last_checkpoint = 0
    later_checkpoints = set(checkpoints) - {0}
    for k in range(steps):
        loss, grad = problem.loss_and_grad(x)  # f(x_k) and its gradient
        if k > 0:
            successes = successes + (loss > loss_previous).float()
        better = loss > best_loss
        best_x = torch.where(better.view(view), x, best_x)
        best_grad = torch.where(better.view(view), grad, best_grad)
        best_loss = torch.where(better, loss, best_loss)
        loss_previous = loss
        if k == 0:
            best_at_checkpoint = best_loss  # f_max at w_0 = 0
        elif k in later_checkpoints:
            # Condition 1: too few successful steps; condition 2: the step size was not reduced
            # at the previous checkpoint and the best loss did not rise since.
            too_few = successes < APGD_RHO * (k - last_checkpoint)
            stalled = ~reduced_at_checkpoint & (best_loss <= best_at_checkpoint)
            reduce = too_few | stalled
            eta = torch.where(reduce, eta / 2.0, eta)
            # Restart reduced images from their best point, without momentum.
            x = torch.where(reduce.view(view), best_x, x)
            x_previous = torch.where(reduce.view(view), best_x, x_previous)
            grad = torch.where(reduce.view(view), best_grad, grad)
            loss_previous = torch.where(reduce, best_loss, loss_previous)
            reduced_at_checkpoint = reduce
            best_at_checkpoint = best_loss
            successes = torch.zeros_like(successes)
            last_checkpoint = k
        z = problem.project(x + eta.view(view) * grad.sign())
        if k == 0:
            x_next = z
        else:
            momentum = APGD_MOMENTUM * (z - x) + (1.0 - APGD_MOMENTUM) * (x - x_previous)
            x_next = problem.project(x + momentum)
        x_previous, x = x, x_next
    with torch.no_grad():  # the last iterate is a candidate too
        best_x, best_loss = update_best(best_x, best_loss, x, problem.loss(x))
    return best_x, best_loss
