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

from .names import ATTACKS
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


def check_members(name: str, members: Sequence[str | Member] | None) -> None:
    """Refuse ``members`` for an attack other than ``worst`` and ``standard``, and anything but
    :class:`.standard.Member` budgets for ``standard`` (ValueError naming the attack)."""
    lookup(name)
    if members is not None and name not in ("worst", "standard"):
        raise ValueError(f"members only apply to the 'worst' and 'standard' attacks, not "
                         f"{name!r}")
    if members is not None and name == "standard" and not all(
            isinstance(m, Member) for m in members):
        raise ValueError("standard's members are Member(attack, objective, steps, queries)")


def run_attack(name: str, problem: AttackProblem, budget: AttackBudget | None = None
               ) -> AttackResult:
    """Run attack ``name`` (see ``ATTACKS``) on ``problem`` within ``budget`` (default: 10
    steps, one restart, the Square Attack's default queries); return the adversarial images
    and the per-image final loss, the objective in eval mode.

    ``problem`` holds the detector (a PatchGuard-like model or any detector,
    :mod:`.attackable`), the clean images, the objective and its inputs and epsilon (in [0, 1]
    pixel units); ``budget.members`` only applies to ``worst`` (attack names) and ``standard``
    (:class:`.standard.Member` budgets instead of the fixed ones).
    """
    budget = AttackBudget() if budget is None else budget
    check_members(name, budget.members)
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
