"""Inputs for the attack tests: a batch with anomalous images and masks, and objective
values computed directly from the registry's objectives."""

from __future__ import annotations

import torch

from patchguard.adversarial.attackable import as_detector
from patchguard.adversarial.attacks import run_attack as _run_attack
from patchguard.adversarial.names import DEFAULT_QUERIES
from patchguard.adversarial.objectives import resolve_objective
from patchguard.adversarial.problem import AttackBudget, AttackProblem

from .models import TINY_SIZE


def attack_batch(seed: int = 1, n: int = 4):
    """Images, patch targets, labels and pixel masks: the first half anomalous."""
    torch.manual_seed(seed)
    x = torch.rand(n, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.zeros(n)
    labels[: n // 2] = 1
    masks = torch.zeros(n, 1, TINY_SIZE, TINY_SIZE)
    masks[: n // 2, :, 4:36, 8:24] = 1  # touches patches (0,0), (0,1), (1,0), (1,1), (2,0), (2,1)
    targets = (torch.nn.functional.max_pool2d(masks, 16).flatten(1) > 0).float()
    return x, targets, labels, masks


def objective_value(model, objective, x, targets, labels, masks):
    """Per-image value of ``objective`` (a name) for ``model`` at ``x``, without gradients."""
    with torch.no_grad():
        return resolve_objective(objective)(as_detector(model)(x), targets, labels, masks)


def run_attack(name, detector, images, targets, labels, epsilon, steps, objective="mask",
           restarts=1, masks=None, generator=None, members=None, queries=None):
    """``run_attack`` on raw tensors: the problem and budget built from loose arguments, so
    that the tests read as the attacks' definitions do."""
    problem = AttackProblem(detector, images, targets, labels, epsilon, objective, masks)
    budget = AttackBudget(steps=int(steps), restarts=int(restarts),
                          queries=DEFAULT_QUERIES if queries is None else int(queries),
                          generator=generator, members=None if members is None else tuple(members))
    return _run_attack(name, problem, budget)
