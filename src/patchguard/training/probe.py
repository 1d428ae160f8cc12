"""The catastrophic-overfitting probe: robust AUROC on fixed held-out images during training.

Single-step training attacks can overfit catastrophically (Wong et al. 2020): the model learns
to defeat the one-step attack while a multi-step attack takes it apart, and the training loss
keeps falling. The probe measures image AUROC of normal against pseudo-anomalous images that
are not in the training batches, clean, under FGSM and under PGD-10 from a random start, both
on the ``score`` objective (the decision), in eval mode. A collapse of the PGD AUROC while the
training loss falls is flagged in the log and warned about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adversarial.attacks import run_attack
from ..adversarial.problem import AttackBudget, AttackProblem, eval_mode
from ..evaluation.metrics import auroc

logger = logging.getLogger(__name__)

PROBE_STEPS = 10
# A collapse: the probe's PGD AUROC this far below its best so far, while the loss is lower.
COLLAPSE_DROP = 0.2
# FGSM AUROC this far above PGD AUROC: the one-step robustness is not real (gradient masking).
GAP_WARN = 0.3


@dataclass
class OverfittingProbe:
    """Fixed probe images (normal, pseudo anomalies and their patch targets) and the history."""

    normal: torch.Tensor
    pseudo: torch.Tensor
    pseudo_targets: torch.Tensor
    epsilon: float  # [0, 1] pixel units
    steps: int = PROBE_STEPS
    history: list[dict[str, float]] = field(default_factory=list)

    def measure(self, model: nn.Module) -> dict[str, float]:
        """Probe AUROCs of ``model``: clean, FGSM and PGD (score objective), in eval mode."""
        images = torch.cat([self.normal, self.pseudo])
        targets = torch.cat([torch.zeros_like(self.pseudo_targets[:1]).expand(
            len(self.normal), -1), self.pseudo_targets])
        labels = torch.cat([torch.zeros(len(self.normal)), torch.ones(len(self.pseudo))])
        labels = labels.to(images.device)
        result: dict[str, float] = {}
        with eval_mode(model):
            for name, attack, steps in (("clean", None, 0), ("fgsm", "fgsm", 1),
                                        ("pgd", "pgd-rs", self.steps)):
                x = images
                if attack is not None:
                    problem = AttackProblem(model, images, targets, labels, self.epsilon,
                                            "score", None)
                    x, _ = run_attack(attack, problem, AttackBudget(
                        steps=steps, generator=torch.Generator().manual_seed(0)))
                with torch.no_grad():
                    scores = model.image_score(model(x, with_attention=False).logits.float())
                result[f"probe_{name}"] = float(auroc(labels.cpu().numpy(),
                                                      scores.cpu().numpy()))
        return result

    def check(self, model: nn.Module, epoch: int, loss: float) -> dict[str, float | bool]:
        """Measure, append to the history and return the log fields of this probe epoch.

        ``probe_gap`` is FGSM minus PGD AUROC (large: one-step robustness that is not real);
        ``catastrophic_overfitting`` is set (and a warning logged) when the PGD AUROC fell
        :data:`COLLAPSE_DROP` below its best probe while the training loss is below that
        probe's. ``fgsm_only_robustness`` (also warned about) marks a gap of at least
        :data:`GAP_WARN`.
        """
        started = time.perf_counter()
        record: dict[str, float | bool] = dict(self.measure(model))
        record["probe_gap"] = record["probe_fgsm"] - record["probe_pgd"]
        record["probe_seconds"] = time.perf_counter() - started
        entry = {"epoch": epoch, "loss": loss, **record}
        if self.history:
            best = max(self.history, key=lambda h: h["probe_pgd"])
            if (best["probe_pgd"] - record["probe_pgd"] >= COLLAPSE_DROP
                    and loss < best["loss"]):
                record["catastrophic_overfitting"] = True
                logger.warning(
                    "epoch %d: robust AUROC collapsed while the loss fell (catastrophic "
                    "overfitting?): probe PGD AUROC %.3f, best %.3f at epoch %d (loss %.4f -> "
                    "%.4f), FGSM %.3f", epoch, record["probe_pgd"], best["probe_pgd"],
                    best["epoch"], best["loss"], loss, record["probe_fgsm"])
        if record["probe_gap"] >= GAP_WARN:
            record["fgsm_only_robustness"] = True
            logger.warning("epoch %d: probe FGSM AUROC %.3f but PGD AUROC %.3f: robustness to "
                           "the one-step attack only", epoch, record["probe_fgsm"],
                           record["probe_pgd"])
        self.history.append(entry)
        return record
