"""Square Attack, L-infinity (Andriushchenko et al., ECCV 2020): random search, no gradients.

Score-based: the detector is only queried (eval mode, ``torch.no_grad``) for the per-image
objective, so masked, shattered or saturated gradients do not stop it. It starts at vertical
stripes (one random sign per column and channel, at the boundary of the epsilon ball); each
iteration sets one random square window of every image to a random vertex of the ball (one sign
per channel) and keeps the change where the objective rose. Anomaly scores have no "success"
threshold (AUROC is a ranking), so every image searches for the whole budget.
"""

from __future__ import annotations

import math

import torch

from .attackable import eval_mode
from .early_stop import scores_from_score_objective
from .problem import AttackBudget, AttackProblem, AttackResult, uniform, update_best

# Initial square area as a fraction of the image. The paper's 0.05 suits 10 000 queries on
# ImageNet; rescaled to 1000 queries its squares shrink to single pixels after 40 % of them.
# Measured at 1000 queries (score objective after the attack, higher = stronger; p_init 0.05 /
# 0.1 / 0.3 / 0.8): adversarially trained gravel model at 112 px 0.07 / 0.13 / 0.26 / 0.30;
# trained undefended tiny model at 64 px 1.70 / 1.83 / 2.04 / 2.11 (0.5: 2.10).
DEFAULT_P_INIT = 0.8
# Iterations (of a 10 000-query budget) after which the paper halves the square's area fraction.
PAPER_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
PAPER_BUDGET = 10_000
# Fresh signs are drawn at most this often for windows a proposal would leave unchanged.
_RESAMPLE_TRIES = 8


def square_fraction(iteration: int, queries: int, p_init: float = DEFAULT_P_INIT) -> float:
    """Area fraction p of the square at ``iteration`` (1-based) of a ``queries`` budget.

    The paper's schedule for 10 000 queries halves p after iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000; other budgets rescale the iteration to a 10 000 budget first.
    """
    scaled = iteration * PAPER_BUDGET // max(queries, 1)
    return p_init / 2 ** sum(scaled > h for h in PAPER_HALVINGS)


def square_side(p: float, height: int, width: int) -> int:
    """Side of a square covering a fraction ``p`` of the image: round(sqrt(p H W)), 1..min(H, W)."""
    return min(max(int(round(math.sqrt(p * height * width))), 1), height, width)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None,
           like: torch.Tensor) -> torch.Tensor:
    """Random +-1 of ``shape``."""
    return torch.where(uniform(shape, generator, like) < 0.5, -1.0, 1.0).to(like.dtype)


def _windows(batch: int, side: int, height: int, width: int,
             generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) boolean masks of one ``side`` x ``side`` square per image, placed uniformly."""
    corners = uniform((batch, 2), generator, like)
    top = (corners[:, 0] * (height - side + 1)).floor().long().clamp(max=height - side)
    left = (corners[:, 1] * (width - side + 1)).floor().long().clamp(max=width - side)
    rows = torch.arange(height, device=like.device).view(1, height, 1)
    cols = torch.arange(width, device=like.device).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1))
    return (inside_rows & inside_cols).unsqueeze(1)


def _propose(original: torch.Tensor, current: torch.Tensor, window: torch.Tensor,
             signs: torch.Tensor, eps: float) -> torch.Tensor:
    """``current`` with its window set to the clean image plus ``signs`` eps, clipped to [0, 1]."""
    vertex = (original + eps * signs).clamp(0.0, 1.0)
    return torch.where(window, vertex, current)


@torch.no_grad()
def square_run(problem: AttackProblem, queries: int, p_init: float = DEFAULT_P_INIT,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One Square Attack run: best images, their eval-mode objective (B,) and the queries made.

    Every query scores the whole batch once; a run makes exactly ``queries`` of them (the
    vertical-stripes start, then ``queries - 1`` proposals). Each proposal draws the same
    amount of random numbers whatever the images do (a window, its signs and
    :data:`_RESAMPLE_TRIES` spare signs), so each image's search depends only on its own
    numbers: an image an early-stopped ``standard`` no longer attacks (``problem.stop``) is
    simply not scored, and the others' searches are those of the full run.
    """
    original = problem.original
    batch, channels, height, width = original.shape
    eps = problem.epsilon
    view = (-1, 1, 1, 1)
    stop = problem.stop
    stripes = eps * _signs((batch, channels, 1, width), generator, original)
    best_x = problem.project(original + stripes)
    with eval_mode(problem.detector):
        best_loss = problem.loss_active(best_x)
        _note_scores(problem, best_loss)
        used = 1
        for iteration in range(1, queries):
            side = square_side(square_fraction(iteration, queries, p_init), height, width)
            window = _windows(batch, side, height, width, generator, original)
            signs = _signs((batch, channels, 1, 1), generator, original)
            spare = [_signs((batch, channels, 1, 1), generator, original)
                     for _ in range(_RESAMPLE_TRIES)]
            used += 1
            if stop is not None and not bool(stop.active.any()):
                continue  # every image placed: only the numbers are drawn, as in a full run
            candidate = _propose(original, best_x, window, signs, eps)
            # A proposal equal to the current point would waste a query: take spare signs.
            for fresh in spare:
                same = ((candidate - best_x).abs() < 1e-7).flatten(1).all(dim=1)
                if not bool(same.any()):
                    break
                signs = torch.where(same.view(view), fresh, signs)
                candidate = _propose(original, best_x, window, signs, eps)
            best_x, best_loss = update_best(best_x, best_loss, candidate,
                                            problem.loss_active(candidate))
            _note_scores(problem, best_loss)
    return best_x, best_loss, used


def _note_scores(problem: AttackProblem, best_loss: torch.Tensor) -> None:
    """On the ``score`` objective the eval-mode losses are the image scores (up to sign) that
    an early-stopped ``standard`` reads: tell it the images' best so far."""
    stop = problem.stop
    if stop is not None and problem.objective_name == "score":
        stop.reached(scores_from_score_objective(best_loss, problem.labels), stop.active.clone())


def attack_square(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """Square Attack with ``queries`` detector queries per restart (``steps`` unused); best run."""
    if budget.queries <= 0:
        return problem.unchanged()
    best_x = best_loss = None
    for _ in range(max(1, budget.restarts)):
        x, loss, _ = square_run(problem, budget.queries, generator=budget.generator)
        if best_x is None or best_loss is None:
            best_x, best_loss = x, loss
        else:  # the losses are already eval-mode objectives, as keep_best would score them
            best_x, best_loss = update_best(best_x, best_loss, x, loss)
    return best_x, best_loss
