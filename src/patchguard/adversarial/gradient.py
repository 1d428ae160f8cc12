"""The gradient attacks of the evaluation besides Auto-PGD: the paper's PGD, PGD with random
restarts, and FGSM. Each takes an :class:`.problem.AttackProblem` and an
:class:`.problem.AttackBudget` and returns the adversarial images with their eval-mode loss.
"""

from __future__ import annotations

import math

import torch

from .ascent import signed_gradient_ascent
from .problem import AttackBudget, AttackProblem, AttackResult, update_best


def attack_pgd(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """The paper's PGD (docs/method.md, section 4: step 2.5 eps / steps, no random start, last
    iterate) on any detector and per-image objective: the loop of the training-time
    :func:`.training_attacks.pgd_attack` (:func:`.ascent.signed_gradient_ascent`) on the
    problem's eval-mode loss."""
    if budget.steps <= 0:
        return problem.unchanged()
    alpha = 2.5 * problem.epsilon / budget.steps
    # Images an early-stopped standard no longer attacks take no step (zero gradient).
    x = signed_gradient_ascent(lambda z: problem.loss_and_grad_active(z, -math.inf),
                               problem.original, problem.original.clone(), problem.epsilon,
                               alpha, budget.steps)
    return x, problem.loss_active(x)


def attack_pgd_rs(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """PGD from uniform random starts with ``restarts`` runs; per image the best iterate of all."""
    if budget.steps <= 0:
        return problem.unchanged()
    alpha = 2.5 * problem.epsilon / budget.steps
    best_x = best_loss = None
    for _ in range(max(1, budget.restarts)):
        start = problem.random_start(budget.generator)
        run = [start, torch.full_like(problem.labels, -math.inf)]

        def observe(x: torch.Tensor, loss: torch.Tensor, run: list = run) -> None:
            run[0], run[1] = update_best(run[0], run[1], x, loss)

        x = signed_gradient_ascent(problem.loss_and_grad, problem.original, start,
                                   problem.epsilon, alpha, budget.steps, observe)
        with torch.no_grad():  # the last iterate is a candidate too
            run_x, _ = update_best(run[0], run[1], x, problem.loss(x))
        # Across restarts compare with the same eval-mode loss that is reported, so more
        # restarts can never report a lower loss.
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def attack_fgsm(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """FGSM: one signed-gradient step of size epsilon from the clean images (``steps`` unused)."""
    _, grad = problem.loss_and_grad(problem.original)
    adversarial = problem.project(problem.original + problem.epsilon * grad.sign())
    return adversarial, problem.final_loss(adversarial)
