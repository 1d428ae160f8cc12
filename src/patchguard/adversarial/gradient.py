"""The gradient attacks of the evaluation besides Auto-PGD: the paper's PGD, PGD with random
restarts, and FGSM. Each takes an :class:`.problem.AttackProblem` and an
:class:`.problem.AttackBudget` and returns the adversarial images with their eval-mode loss.
"""

from __future__ import annotations

import math

import torch

from .problem import AttackBudget, AttackProblem, AttackResult, update_best


def attack_pgd(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """The paper's PGD (docs/method.md, section 4): step 2.5 eps / steps, no random start.

    Returns the last iterate. The algorithm of :func:`.pgd.pgd_attack` (the training-time attack,
    which stays written on patch logits) on any detector and per-image objective; on PatchGuard
    with the ``mask`` objective it gives the same images (tests/models/test_reference.py checks
    them against the authors' own).
    """
    if budget.steps <= 0:
        return problem.unchanged()
    alpha = 2.5 * problem.epsilon / budget.steps
    x = problem.original.clone()
    for _ in range(budget.steps):
        _, grad = problem.loss_and_grad(x)
        x = problem.project(x + alpha * grad.sign())
    return x, problem.final_loss(x)


def attack_pgd_rs(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """PGD from uniform random starts with ``restarts`` runs; per image the best iterate of all."""
    if budget.steps <= 0:
        return problem.unchanged()
    alpha = 2.5 * problem.epsilon / budget.steps
    best_x = best_loss = None
    for _ in range(max(1, budget.restarts)):
        x = problem.random_start(budget.generator)
        run_x, run_loss = x, torch.full_like(problem.labels, -math.inf)
        for _ in range(budget.steps):
            loss, grad = problem.loss_and_grad(x)
            run_x, run_loss = update_best(run_x, run_loss, x, loss)
            x = problem.project(x + alpha * grad.sign())
        with torch.no_grad():  # the last iterate is a candidate too
            run_x, run_loss = update_best(run_x, run_loss, x, problem.loss(x))
        # Across restarts compare with the same eval-mode loss that is reported, so more
        # restarts can never report a lower loss.
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def attack_fgsm(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """FGSM: one signed-gradient step of size epsilon from the clean images (``steps`` unused)."""
    _, grad = problem.loss_and_grad(problem.original)
    adversarial = problem.project(problem.original + problem.epsilon * grad.sign())
    return adversarial, problem.final_loss(adversarial)
