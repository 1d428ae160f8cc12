"""Auto-PGD (Croce & Hein 2020), L-infinity, with per-image step sizes and restarts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .early_stop import scores_from_score_objective
from .problem import AttackBudget, AttackProblem, AttackResult, update_best

IMAGE_SCORE = "score"  # the objective whose values are the image scores (up to sign)

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
# Below this many steps APGD is not recommended: its step-size schedule has hardly started.
# Measured on an adversarially trained demo gravel model (fast preset, 112 px, 16 test images,
# score objective, 8/255): it stayed below the faithful PGD at 5 and 10 steps (so did
# torchattacks' APGD) and was above it from 15 steps on; 20 leaves a margin.
APGD_MIN_STEPS = 20


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD checkpoint iterations, the paper's schedule in whole steps as its authors count them.

    Paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), checkpoints at
    p_j * steps. In whole steps (each at least one): the first period is floor(0.22 N) steps,
    each next one floor(0.03 N) shorter, down to floor(0.06 N). At 100 steps this is exactly
    ceil(p_j * 100); at small budgets the periods shrink faster than the fractions would (from
    the second checkpoint on one every step at N = 10), which measured stronger there.
    """
    # Integer arithmetic: in floats 0.22 * 50 is 11.000000000000002 and similar.
    first = max(22 * steps // 100, 1)
    shrink = max(3 * steps // 100, 1)
    shortest = max(6 * steps // 100, 1)
    points, period, at = [0], first, first
    while at <= steps:
        points.append(at)
        period = max(period - shrink, shortest)
        at += period
    return points


def attack_apgd(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """Auto-PGD (Croce & Hein 2020), L-infinity, per-image step sizes; best over restarts.

    Step size starts at 2 eps; momentum 0.75; at each checkpoint an image's step size is halved
    and it continues from its best point (momentum from its previous iterate, as in the paper's
    Algorithm 1) if fewer than 75 % of the steps since the last checkpoint raised its loss, or
    if its step size was not reduced at the last checkpoint and its best loss has not improved
    since. Every restart begins at a uniform random point of the ball. Not recommended below
    :data:`APGD_MIN_STEPS` steps.
    """
    if budget.steps <= 0:
        return problem.unchanged()
    checkpoints = apgd_checkpoints(budget.steps)
    best_x = best_loss = None
    for _ in range(max(1, budget.restarts)):
        start = problem.random_start(budget.generator)
        run_x, _ = _apgd_run(problem, budget.steps, checkpoints, start)
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
    checked = torch.full((batch,), -math.inf, device=start.device)  # see place_early
    later_checkpoints = set(checkpoints) - {0}
    for k in range(steps):
        if problem.stop is not None and not bool(problem.stop.active.any()):
            break  # every image placed: nothing left to attack
        # f(x_k) and its gradient; images no longer attacked keep their loss (no success, no
        # new best) and take no step
        loss, grad = problem.loss_and_grad_active(x, loss_previous)
        if k > 0:
            successes = successes + (loss > loss_previous).float()
        better = loss > best_loss
        best_x = torch.where(better.view(view), x, best_x)
        best_grad = torch.where(better.view(view), grad, best_grad)
        best_loss = torch.where(better, loss, best_loss)
        if problem.stop is not None:
            place_early(problem, best_x, best_loss, checked)
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
            # Restart reduced images from their best point. As in the paper's Algorithm 1 the
            # previous iterate stays, so the momentum term points from it to the best point
            # (zeroing it measured weaker: score objective 2.48 against 2.54 at 100 steps).
            x = torch.where(reduce.view(view), best_x, x)
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
        best_x, best_loss = update_best(best_x, best_loss, x, problem.loss_active(x))
    return best_x, best_loss


def place_early(problem: AttackProblem, best_x: torch.Tensor, best_loss: torch.Tensor,
                checked: torch.Tensor) -> None:
    """During a ``score`` member of an early-stopped ``standard``: stop the images whose best
    point so far already places them (see :mod:`.early_stop`).

    The loop's loss only proposes them; their eval-mode score, as ``standard`` will read it,
    decides (one extra pass per image stopped), so the rule holds whatever the backend.
    ``checked`` (B,) keeps per image the best loss last checked: an image is proposed again
    only once its best loss rose above it. Checking the same point again could not place it:
    its eval-mode score is in its bound already, and :meth:`.early_stop.ImageStop.refresh`
    places it as soon as other bounds move far enough.
    """
    stop = problem.stop
    if problem.objective_name != IMAGE_SCORE:
        return
    proposed = stop.would_place(scores_from_score_objective(best_loss, problem.labels))
    index = (proposed & stop.active & (best_loss > checked)).nonzero().squeeze(1)
    if len(index):
        checked[index] = best_loss[index]
        values = problem.rows(index).final_loss(best_x[index])
        which = torch.zeros_like(stop.active)
        which[index] = True
        scores = torch.zeros_like(best_loss)
        scores[index] = scores_from_score_objective(values, problem.labels[index])
        stop.reached(scores, which)
