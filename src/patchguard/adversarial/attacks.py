"""The evaluation attacks (registered by name in :data:`.names.ATTACKS`, re-exported here), the
per-image worst case ``worst``, and :func:`run_attack` / :func:`attack_per_metric`, which
every caller goes through.

Every attack is a function ``(problem, budget) -> (adversarial images, per-image loss)`` of an
:class:`.problem.AttackProblem` (detector, clean images, objective and its inputs, epsilon) and
an :class:`.problem.AttackBudget` (steps, restarts, queries, generator). It reports the
objective in eval mode, so that results of different attacks compare and the best point can be
tracked per image. L-infinity on input pixels in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .names import ATTACKS, DEFAULT_QUERIES
from .objectives import PerImageObjective
from .problem import AttackBudget, AttackProblem, AttackResult, update_best
from .standard import (
    Member,
    MetricAdversarials,
    attack_standard_per_metric,
)

Attack = Callable[[AttackProblem, AttackBudget], AttackResult]

DEFAULT_WORST_MEMBERS = ("pgd", "apgd", "pgd-rs")


def attack_worst(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """Run each member attack in turn (``budget.members``, default :data:`DEFAULT_WORST_MEMBERS`)
    with the same objective and budget; per image keep the result with the highest eval loss."""
    members = DEFAULT_WORST_MEMBERS if budget.members is None else budget.members
    if not members or any(name in ("worst", "standard") for name in members):
        raise ValueError(f"worst needs member attacks other than worst and standard, got "
                         f"{list(members)}")
    best_x = best_loss = None
    for name in members:
        x, loss = lookup(name)(problem, budget)
        if best_x is None or best_loss is None:
            best_x, best_loss = x, loss
        else:  # every member reports the same eval-mode objective, so losses compare directly
            best_x, best_loss = update_best(best_x, best_loss, x, loss)
    return best_x, best_loss


def lookup(name: str) -> Attack:
    """The attack called ``name`` (see :data:`.names.ATTACKS`; ValueError naming the others)."""
    return ATTACKS[name]


def _problem_and_budget(
    name: str, detector: object, images: torch.Tensor, targets: torch.Tensor | None,
    labels: torch.Tensor | None, epsilon: float, steps: int,
    objective: str | PerImageObjective, restarts: int, masks: torch.Tensor | None,
    generator: torch.Generator | None, members: Sequence[str | Member] | None,
    queries: int | None,
) -> tuple[AttackProblem, AttackBudget]:
    lookup(name)
    if members is not None and name not in ("worst", "standard"):
        raise ValueError(f"members only apply to the 'worst' and 'standard' attacks, not "
                         f"{name!r}")
    if members is not None and name == "standard" and not all(
            isinstance(m, Member) for m in members):
        raise ValueError("standard's members are Member(attack, objective, steps, queries)")
    problem = AttackProblem(detector, images, targets, labels, epsilon, objective, masks)
    budget = AttackBudget(steps=int(steps), restarts=int(restarts),
                          queries=DEFAULT_QUERIES if queries is None else int(queries),
                          generator=generator,
                          members=None if members is None else tuple(members))
    return problem, budget


def run_attack(
    name: str,
    detector: object,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    members: Sequence[str | Member] | None = None,
    queries: int | None = None,
) -> AttackResult:
    """Run attack ``name`` (see ``ATTACKS``); return adversarial images and per-image final loss.

    ``detector`` is a PatchGuard-like model or any detector (:mod:`.attackable`); ``epsilon`` is
    in [0, 1] pixel units; ``targets`` (B, N) are patch targets (None without patch logits);
    ``labels`` (B,) are 0 normal / 1 anomalous (None: derived from ``targets``); ``masks`` are
    (B, [1,] H, W) ground-truth masks or None; ``members`` only applies to ``worst`` (attack
    names) and ``standard`` (:class:`.standard.Member` budgets instead of the fixed ones);
    ``queries`` is the budget of the score-based ``square`` (default
    :data:`.names.DEFAULT_QUERIES`; ``worst`` passes it on). The final loss is the objective in
    eval mode.
    """
    problem, budget = _problem_and_budget(name, detector, images, targets, labels, epsilon,
                                          steps, objective, restarts, masks, generator,
                                          members, queries)
    if problem.epsilon <= 0:
        return problem.unchanged()
    return lookup(name)(problem, budget)


def attack_per_metric(name: str, problem: AttackProblem, budget: AttackBudget
                      ) -> MetricAdversarials:
    """Adversarial images for image- and pixel-level metrics: separate worst cases for
    ``standard`` (whose members bring their own objectives and budgets; ``budget`` gives the
    generators and ``budget.members``), one batch for any other attack."""
    if name == "standard" and problem.epsilon > 0:
        return attack_standard_per_metric(problem, budget, budget.members)
    lookup(name)
    if problem.epsilon <= 0:
        x, loss = problem.unchanged()
    else:
        x, loss = lookup(name)(problem, budget)
    return MetricAdversarials(x, x, loss, loss)
