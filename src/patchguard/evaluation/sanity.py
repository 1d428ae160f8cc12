"""Sanity checks against gradient masking (Carlini et al., "On Evaluating Adversarial Robustness").

A robustness number is only credible if the attack behaves like an attack: more budget must
never help the model, an absurd budget must break it, and a gradient-free attack (Square) must
not beat the gradient attack. Violations are reported as warnings, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..adversarial.names import DEFAULT_QUERIES, QUERY_ATTACKS
from ..adversarial.settings import AttackSettings
from ..data.datasets import TestDataset
from .evaluator import evaluate

# Attacks the Square comparison does not apply to: Square itself, and standard, which holds it.
_HOLDS_SQUARE = (*QUERY_ATTACKS, "standard")


@dataclass
class SanityReport:
    """The rows the checks evaluated and the warnings they raised (empty = all passed)."""

    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.warnings


@dataclass(frozen=True)
class SanityLimits:
    """What the gradient-masking checks sweep and tolerate (see :func:`sanity_check`)."""

    epsilons: tuple[float, ...] = (1, 2, 4, 8, 16)
    large_epsilon: float = 128.0
    more_steps_factor: int = 4
    tolerance: float = 0.02
    near_zero: float = 0.1
    square_queries: int = DEFAULT_QUERIES


def sanity_check(
    model: Any,
    dataset: TestDataset,
    attack: str = "pgd",
    objective: str = "mask",
    steps: int = 10,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **limits: Any,
) -> SanityReport:
    """Epsilon sweep, more steps, huge epsilon, Square: flag any sign of gradient masking.

    ``model`` is PatchGuard or any detector (:func:`patchguard.adversarial.attackable.as_detector`);
    ``limits`` are :class:`SanityLimits` fields given as keywords (or ``limits=`` one value).
    Checks, on the AUROCs the objective targets (image for ``score``, pixel for ``map``, both
    for ``mask``; pixel only with masks), with ``tolerance`` for noise:
    the attacked AUROC does not increase with epsilon; ``more_steps_factor`` times the steps
    does not raise it; at the largest swept epsilon the gradient-free Square Attack
    (``square_queries`` queries, same objective) does not get it clearly lower than the better
    of the two gradient runs (skipped when ``attack`` is ``square`` or ``standard``, or
    ``square_queries`` is 0); at ``large_epsilon`` it falls to at most ``near_zero``.
    """
    given = limits.pop("limits", None) or SanityLimits()
    lim = replace(given, **limits)
    epsilons, large_epsilon, more_steps_factor = (lim.epsilons, lim.large_epsilon,
                                                  lim.more_steps_factor)
    tolerance, near_zero, square_queries = lim.tolerance, lim.near_zero, lim.square_queries
    sweep = sorted({0.0, *map(float, epsilons)})
    base = AttackSettings(attacks=(attack,), epsilons=tuple(sweep), steps=steps,
                          objective=objective, batch_size=batch_size)
    rows = evaluate(model, dataset, base, device=device, progress=progress)
    report = SanityReport(rows=list(rows))
    # Only the metrics the objective attacks must fall: the score objective may leave pixel
    # maps anywhere, the map objective the image score.
    targeted = {"score": ["image_auroc"], "map": ["pixel_auroc"]}.get(
        objective, ["image_auroc", "pixel_auroc"])
    metrics = [m for m in targeted if rows[0][m] is not None]
    for metric in metrics:
        values = [(r["epsilon"], r[metric]) for r in rows]
        report.checks.append(f"{metric} non-increasing in epsilon over {sweep}")
        for (eps_a, a), (eps_b, b) in zip(values, values[1:]):
            if b is not None and a is not None and b > a + tolerance:
                report.warnings.append(
                    f"{metric} rose from {a:.3f} at eps {eps_a:g} to {b:.3f} at eps {eps_b:g}: "
                    "a larger budget helped the model (attack too weak or gradients masked)")
    eps_ref = max(e for e in sweep if e > 0)
    reference = next(r for r in rows if r["epsilon"] == eps_ref)
    longer = evaluate(model, dataset, base, device=device, progress=progress,
                      epsilons=(eps_ref,), steps=steps * more_steps_factor)[0]
    report.rows.append(longer)
    for metric in metrics:
        report.checks.append(f"{metric} with {longer['steps']} steps <= with {steps} steps")
        if longer[metric] > reference[metric] + tolerance:
            report.warnings.append(
                f"{metric} at eps {eps_ref:g} rose from {reference[metric]:.3f} "
                f"({steps} steps) to {longer[metric]:.3f} ({longer['steps']} steps): more "
                "attack steps helped the model")
    if attack not in _HOLDS_SQUARE and square_queries > 0:
        square = evaluate(model, dataset, base, device=device, progress=progress,
                          epsilons=(eps_ref,), attacks=("square",), queries=square_queries)[0]
        report.rows.append(square)
        for metric in metrics:
            # The best gradient result at this epsilon: with the base or the longer budget.
            gradient = min(reference[metric], longer[metric])
            report.checks.append(
                f"{metric} at eps {eps_ref:g}: Square ({square_queries} queries) >= {attack}")
            if square[metric] is not None and square[metric] < gradient - tolerance:
                report.warnings.append(
                    f"{metric} at eps {eps_ref:g}: the gradient-free Square Attack "
                    f"({square_queries} queries) got it to {square[metric]:.3f}, clearly "
                    f"stronger than {attack} ({gradient:.3f}): a sign of gradient masking; "
                    "report the Square (or standard) number, not the gradient attack's")
    huge = evaluate(model, dataset, base, device=device, progress=progress,
                    epsilons=(large_epsilon,))[0]
    report.rows.append(huge)
    report.checks.append(f"image_auroc at eps {large_epsilon:g} <= {near_zero}")
    if huge["image_auroc"] is not None and huge["image_auroc"] > near_zero:
        report.warnings.append(
            f"image_auroc is still {huge['image_auroc']:.3f} at eps {large_epsilon:g}/255, "
            "where any model should be broken: the attack's gradients are probably masked or "
            "uninformative; do not trust the robustness numbers")
    return report
