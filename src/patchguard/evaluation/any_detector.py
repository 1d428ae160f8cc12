"""Any anomaly detector under patchguard's attacks: :func:`evaluate_detector`.

A *detector* is any differentiable callable ``images -> (image scores, anomaly maps)``: images
(B, 3, H, W) in [0, 1], scores (B,) and maps (B, H, W), higher = more anomalous. It may also
return patch logits (B, N) as a third value (give ``patch_size``), which the paper's ``mask``
objective needs; without them the attacks use the ``score`` and ``map`` objectives. Every
attack (``pgd``, ``pgd-rs``, ``fgsm``, ``apgd``, ``worst``, ``square``, ``standard``), every
metric of the evaluation rows and the gradient-masking sanity checks run on it through the very
code that evaluates PatchGuard (``patchguard test`` wraps its model the same way), so numbers of
different detectors compare. The public import is ``patchguard.api`` (or ``patchguard``).
Example::

    from patchguard.api import evaluate_detector

    def detector(images):                      # e.g. an adapter around another library
        scores, maps = my_model(normalise(images))
        return scores, maps

    result = evaluate_detector(detector, test_set, epsilons=(0, 2, 8),
                               attacks=("pgd", "standard"), module=my_model)
    print(result.table())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from ..adversarial.attackable import DetectorOutput, as_detector
from ..adversarial.names import QUERY_ATTACKS
from ..adversarial.settings import AttackSettings
from ..adversarial.standard import STANDARD_MEMBERS, Member
from ..data.datasets import TensorTestSet, TestDataset
from .evaluator import evaluate
from .report.tables import format_table
from .sanity import SanityReport, sanity_check

__all__ = ["AttackSettings", "DetectorEvaluation", "DetectorOutput", "Member",
           "STANDARD_MEMBERS", "TensorTestSet", "evaluate_detector"]


@dataclass
class DetectorEvaluation:
    """The rows of :func:`evaluate_detector` (one per attack and epsilon, clean first) and,
    when asked for, the sanity report."""

    rows: list[dict[str, Any]]
    sanity: SanityReport | None = None

    def table(self) -> str:
        """The terminal table of ``patchguard test``, with sanity warnings when checked."""
        text = format_table(self.rows)
        if self.sanity is not None:
            lines = [f"- checked: {check}" for check in self.sanity.checks]
            lines += [f"- WARNING: {w}" for w in self.sanity.warnings] or ["- all passed"]
            text += "\nSanity checks against gradient masking:\n" + "\n".join(lines)
        return text


def evaluate_detector(
    detector: Callable[[torch.Tensor], Any] | nn.Module,
    test_set: Dataset,
    epsilons: Sequence[float] | None = None,
    attacks: Sequence[str] | None = None,
    *,
    settings: AttackSettings | None = None,
    patch_size: int | None = None,
    module: nn.Module | None = None,
    sanity: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **options: Any,
) -> DetectorEvaluation:
    """Evaluate ``detector`` clean and under ``attacks`` at ``epsilons`` (1/255 units).

    Args:
        detector: a differentiable callable ``images -> (scores, maps[, patch logits])`` or
            an ``nn.Module`` returning that; it must not run under ``torch.no_grad()`` inside.
        test_set: a patchguard test set (``patchguard.data.datasets.load_test_set``), a
            ``TensorTestSet`` of in-memory images, labels and masks, or any data set of the
            same samples (``image`` (3, H, W) in [0, 1], ``mask`` (1, H, W), ``label``,
            ``has_mask``, ``path``, and a ``has_pixel_masks`` attribute).
        epsilons: shorthand for that field of ``settings``: L-infinity budgets in 1/255
            units, 0 is the clean row (default ``(0, 8)``).
        attacks: shorthand for that field of ``settings``: ``pgd``, ``pgd-rs``, ``fgsm``,
            ``apgd``, ``worst``, ``square``, ``standard`` (default ``("pgd",)``).
        settings: the attacks, epsilons, budgets, seed and batching as one
            :class:`~patchguard.adversarial.settings.AttackSettings`; its fields may also be
            given as keywords (``objective``, ``steps``, ``restarts``, ``queries``,
            ``batch_size``, ``workers``, ``standard_members``, ``seed``, ``early_stop``).
            The objective defaults to ``mask`` for a detector with patch logits and ``score``
            otherwise; ``standard`` uses its own fixed members (``standard_members`` replaces
            them, and its rows then say ``custom``).
        patch_size: pixels per patch side when the detector returns patch logits.
        module: the ``nn.Module`` behind a plain function, so that scoring runs in eval mode
            and its parameters stay frozen while the attacks take input gradients (found by
            itself when ``detector`` is a module or a bound method of one).
        sanity: also run the gradient-masking checks (epsilon sweep, more steps, Square, eps
            128/255) with the first gradient attack, as ``patchguard test --sanity`` does.
        device: where the detector runs.
        progress: show progress bars.
        **options: fields of ``AttackSettings`` by name, replacing those of ``settings``.

    Returns:
        A ``DetectorEvaluation``: ``rows``, one dict per attack and epsilon as
            ``patchguard test`` writes them (image and pixel AUROC, AP, F1-max, AUPRO,
            budgets, ``images_per_s``), and ``sanity``, the report of the checks when asked
            for.

    Example:
        ```python
        from patchguard.api import TensorTestSet, evaluate_detector

        test_set = TensorTestSet(images, labels, masks)   # images (n, 3, H, W) in [0, 1]
        result = evaluate_detector(lambda x: my_model(x), test_set, epsilons=(0, 2, 8),
                                   attacks=("pgd", "standard"), module=my_model, sanity=True)
        print(result.table())
        ```
    """
    wrapped = as_detector(detector, patch_size=patch_size, module=module)
    # The evaluation reads only the samples and ``has_pixel_masks``, which any such set offers.
    test_set = cast(TestDataset, test_set)
    if epsilons is not None:
        options["epsilons"] = tuple(epsilons)
    if attacks is not None:
        options["attacks"] = tuple(attacks)
    if settings is None and options.get("objective") is None:
        options["objective"] = "mask" if wrapped.has_patch_logits else "score"
    settings = AttackSettings.build(settings, **options)
    rows = evaluate(wrapped, test_set, settings, device=device, progress=progress)
    report = None
    if sanity:
        gradient = [a for a in settings.attacks if a not in (*QUERY_ATTACKS, "standard")]
        attack, probe = (gradient[0], settings.objective) if gradient else ("apgd", "score")
        report = sanity_check(wrapped, test_set, attack=attack, objective=probe,
                              steps=settings.steps, batch_size=settings.batch_size,
                              device=device, progress=progress,
                              square_queries=settings.query_budget)
    return DetectorEvaluation(rows, report)
