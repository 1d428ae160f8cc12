"""What an attack maximises. The training-time objective of docs/method.md, section 4 (summed
over the batch) and the per-image objectives of the evaluation attacks: ``mask`` (the paper's),
``score`` (the image decision) and ``map`` (the localisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .attackable import DetectorOutput
from .names import OBJECTIVES, PATCH_OBJECTIVES

# Training-time objective: (logits, targets) -> scalar summed over the batch.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Evaluation objective: (detector output, patch targets (B, N) or None, labels (B,), pixel masks
# (B, [1,] H, W) or None) -> per-image loss (B,) that the attacker ascends.
PerImageObjective = Callable[
    [DetectorOutput, torch.Tensor | None, torch.Tensor, torch.Tensor | None], torch.Tensor
]


def mask_difference(values: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """Per row: mean of ``values`` where ``anomalous`` is 0 minus mean where it is 1."""
    anomalous = anomalous.to(values.dtype)
    normal = 1.0 - anomalous
    normal_mean = (values * normal).sum(dim=1) / (normal.sum(dim=1) + 1e-8)
    anomalous_mean = (values * anomalous).sum(dim=1) / (anomalous.sum(dim=1) + 1e-8)
    return normal_mean - anomalous_mean


def mask_objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image: mean logit of normal patches minus mean logit of anomalous patches; summed."""
    return mask_difference(logits, targets).sum()


def anomalous_views(targets: torch.Tensor) -> torch.Tensor:
    """Per view (B,): True where any patch target is anomalous (a pseudo anomaly's view)."""
    return targets.flatten(1).amax(dim=1) > 0


def training_score_objective(model: torch.nn.Module) -> Objective:
    """Training-time ``score`` objective: summed + top-k image score of views without anomalous
    patches, - of views with some (the decision an attacker moves, as :func:`score_loss`)."""

    def objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        anomalous = anomalous_views(targets).to(logits.dtype)
        return ((1.0 - 2.0 * anomalous) * model.image_score(logits)).sum()

    return objective


def training_mask_objective(model: torch.nn.Module) -> Objective:
    """Training-time ``mask`` objective (the paper's): :func:`mask_objective`, whatever the
    model."""
    return mask_objective


def mask_loss(
    output: DetectorOutput,
    targets: torch.Tensor | None,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """The paper's objective per image: mean normal-patch minus mean anomalous-patch logit.

    docs/method.md, section 4.
    """
    if output.patch_logits is None or targets is None:
        raise ValueError("the mask objective needs a detector with patch logits and patch "
                         "targets; use the score or map objective")
    return mask_difference(output.patch_logits, targets)


def score_loss(
    output: DetectorOutput,
    targets: torch.Tensor | None,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """Attack the decision: + image score for normal images, - for anomalous ones."""
    scores = output.scores
    return (1.0 - 2.0 * labels.to(scores.dtype)) * scores


def map_loss(
    output: DetectorOutput,
    targets: torch.Tensor | None,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """Attack localisation: mean map over normal pixels minus mean over anomalous pixels.

    Anomalous pixels come from ``masks``; an image without mask (``masks`` None, or an empty
    mask, e.g. an anomalous image without pixel mask) uses its patch targets upsampled to pixels
    instead, or, without patch targets, its label (every pixel of an anomalous image).
    """
    maps = output.maps
    size = maps.shape[-2:]
    if targets is not None:
        grid = int(math.isqrt(targets.shape[-1]))
        from_targets = F.interpolate(
            targets.to(maps.dtype).reshape(-1, 1, grid, grid), size=size, mode="nearest"
        ).squeeze(1)
    else:
        from_targets = labels.to(maps.dtype).view(-1, 1, 1).expand(-1, *size)
    if masks is None:
        pixels = from_targets
    else:
        pixels = (_as_pixel_masks(masks, size) > 0).to(maps.dtype)
        # Decided per image on the device (no host sync): empty mask -> fall back to targets.
        empty = pixels.flatten(1).sum(dim=1) == 0
        pixels = torch.where(empty.view(-1, 1, 1), from_targets, pixels)
    return mask_difference(maps.flatten(1), pixels.flatten(1))


def _as_pixel_masks(masks: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Masks as (B, H, W) at the map resolution, from (B, H', W') or (B, 1, H', W')."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return masks


def needs_patch_logits(objective: str | PerImageObjective) -> bool:
    """Whether ``objective`` is one that needs patch logits and patch targets (``mask``)."""
    return objective in PATCH_OBJECTIVES or objective is mask_loss


def resolve_objective(objective: str | PerImageObjective) -> PerImageObjective:
    """A per-image objective by name (see :data:`OBJECTIVES`), or the callable itself."""
    if callable(objective):
        return objective
    return OBJECTIVES[objective]
