"""Building a PatchGuard model from a config (with pretrained backbone weights) or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import HEADS, TrainConfig
from ..utils.checkpoint import check_weights, load_checkpoint
from .knn import PatchKNN
from .patchguard import PatchGuard


def model_class(config: TrainConfig) -> type[PatchGuard] | type[PatchKNN]:
    """The network a config describes: its ``head``'s entry in :data:`patchguard.config.HEADS`
    (PatchGuard for the discriminator, PatchKNN for knn)."""
    return HEADS[config.head]


def build_model(config: TrainConfig, load_weights: bool = True) -> tuple[PatchGuard, str]:
    """Create the model and (if configured) load pretrained backbone weights; return the source."""
    model = model_class(config).from_config(config)
    source = "random initialisation (--no-pretrained)"
    if config.pretrained and load_weights:
        from .backbone_weights import load_backbone_weights

        source = load_backbone_weights(
            model.feature_extractor.pretrained_model, config.backbone, config.backbone_weights
        )
    return model, source


def load_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[PatchGuard, dict[str, Any]]:
    """Rebuild a model from a checkpoint (in eval mode) and return it with the checkpoint dict.

    The file is read with ``weights_only=True`` (no code runs) and its stored config is checked
    as a user's would be. A damaged file (config not a mapping, weights missing, of the wrong
    shape, NaN) is refused with :class:`patchguard.utils.checkpoint.CheckpointError` naming it,
    before any weight loads.

    Args:
        checkpoint: a patchguard checkpoint (``last.pt``, ``epoch_NNNN.pt`` or an imported one).
        device: where to put the model.

    Returns:
        ``(model, checkpoint)``: the ``PatchGuard`` network in
            eval mode, and the checkpoint's dict (``config``, ``epoch``, ``thresholds``, ...).

    Example:
        ```python
        import torch
        import patchguard

        model, state = patchguard.load_model("runs/bottle/last.pt")
        images = torch.rand(4, 3, model.image_size, model.image_size)   # in [0, 1]
        scores, maps = model.predict(images)
        ```
    """
    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"], source=str(checkpoint))
    model = model_class(config).from_config(config)
    check_weights(checkpoint, state["model"], model.state_dict())
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, state


def check_checkpoint(checkpoint: str | Path, state: dict[str, Any]) -> TrainConfig:
    """A loaded checkpoint's config and weights checked against each other without allocating
    the network (PyTorch's meta device); CheckpointError naming the file when they disagree."""
    config = TrainConfig.from_dict(state["config"], source=str(checkpoint))
    with torch.device("meta"):
        model = model_class(config).from_config(config)
    check_weights(checkpoint, state["model"], model.state_dict())
    return config
