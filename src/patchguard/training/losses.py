"""Training losses: per-patch BCE and the KL attention regulariser (docs/method.md, section 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def patch_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE with logits per patch, summed over patches and averaged over images."""
    per_patch = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    )
    return per_patch.sum(dim=1).mean()


def attention_kl_regularizer(
    attentions: Sequence[torch.Tensor], coefficients: Sequence[float]
) -> torch.Tensor:
    """Sum of c_i * mean(U * (log U - log(A_i + 1e-8))) with U = 1/N, pushing attention to uniform.

    This is ``F.kl_div(log(A + 1e-8), U, reduction='mean')`` of the original, written out because
    PyTorch announces that reduction='mean' will change meaning to 'batchmean'.
    """
    if len(attentions) != len(coefficients):
        raise ValueError(
            f"{len(attentions)} attention maps but {len(coefficients)} regulariser coefficients"
        )
    total = torch.zeros((), device=attentions[0].device if attentions else None)
    for attention, coefficient in zip(attentions, coefficients):
        n = attention.shape[-1]
        uniform = 1.0 / n
        kl = uniform * (math.log(uniform) - torch.log(attention.float() + 1e-8))
        total = total + coefficient * kl.mean()
    return total


def binary_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))) per patch, summed over patches and
    averaged over images (the TRADES-like term between a view and its attacked twin)."""
    p_logits, q_logits = logits_p.float(), logits_q.float()
    p = torch.sigmoid(p_logits)
    kl = (p * (F.logsigmoid(p_logits) - F.logsigmoid(q_logits))
          + (1.0 - p) * (F.logsigmoid(-p_logits) - F.logsigmoid(-q_logits)))
    return kl.sum(dim=1).mean()


def pairwise_ranking_loss(scores: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """Mean over every (normal, anomalous) pair of softplus(normal score - anomalous score).

    The logistic surrogate of 1 - AUROC on the image scores (RankNet): it falls as every
    anomalous view scores above every normal one. Zero without a pair (one class missing).
    """
    scores = scores.float()
    normal, abnormal = scores[~anomalous], scores[anomalous]
    if normal.numel() == 0 or abnormal.numel() == 0:
        return scores.sum() * 0.0  # keeps the graph (and the device) without a pair
    return F.softplus(normal[:, None] - abnormal[None, :]).mean()
