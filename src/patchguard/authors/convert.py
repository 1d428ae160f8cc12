"""Import checkpoints of the original PatchGuard implementation (rohban-lab/PatchGuard).

The original saves a plain ``state_dict`` of its ``PatchGuard`` module (docs/method.md, section 7):

* ``feature_extractor.pretrained_model.*``: the timm ViT, the same keys as ours (our
  :class:`~patchguard.models.backbone.FeatureExtractor` keeps the attribute name for this reason);
* ``discriminator.positional_encodings`` (N, D) and ``discriminator.output_layer.0.*``: the same;
* ``discriminator.transformer_encoder.<i>.*``: its ``AttentionBlock`` names differ from ours, see
  :data:`ORIGINAL_BLOCK_KEYS`.

The original's normalisation constants are plain attributes, not buffers, so they are not in its
state dict (ours are non-persistent buffers): nothing else needs mapping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_BACKBONE, TrainConfig
from ..models.backbone import create_backbone
from ..models.patchguard import PatchGuard
from ..utils.checkpoint import load_failure
from ..utils.checks import InputError, integer
from ..version import __version__

# The original discriminator block's sub-module names -> ours. The original's AttentionBlock
# holds ``layer_norm_1`` (LayerNorm), ``attn`` (nn.MultiheadAttention, batch_first),
# ``linear`` (Sequential: Linear, GELU, Dropout, Linear) and dropouts without parameters; it
# computes the same LayerNorm(x + MHA(x)) then x + MLP(x) as our DiscriminatorBlock.
ORIGINAL_BLOCK_KEYS = {
    "layer_norm_1": "norm",
    "attn": "attention",  # in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias
    "linear.0": "mlp.0",
    "linear.3": "mlp.3",
}

BLOCK_PREFIX = "discriminator.transformer_encoder."
# The original's default regularised layers and its KL coefficients (docs/method.md, section 3).
# Its loss pairs the coefficients with the regularised layers by position, whatever their block
# numbers: the authors' reference run with layers [2, 4, 6] used 0.005 / 0.01 / 0.05.
DEFAULT_REG = {6: 0.005, 9: 0.01, 12: 0.05}
ORIGINAL_COEFFICIENTS = (0.005, 0.01, 0.05)
_NAME_PATTERN = re.compile(r"^patchguard_([A-Za-z0-9]+)_(.+?)(?:_pgd\d+_last_epoch)?$")


def unwrap_state_dict(payload: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside what torch.load returned (plain, or under 'state_dict'/'model')."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload:
        raise ValueError("not a state dict: expected a dict of parameter names to tensors")
    bad = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a state dict: entries {bad[:5]} are not tensors")
    if all(key.startswith("module.") for key in payload):
        # Saved from nn.DataParallel / DistributedDataParallel.
        payload = {key[len("module."):]: value for key, value in payload.items()}
    return payload


def map_original_key(key: str) -> str:
    """Our state-dict key for one of the original's keys (unknown block sub-keys pass through)."""
    if key.startswith(BLOCK_PREFIX):
        index, _, rest = key[len(BLOCK_PREFIX):].partition(".")
        for old, new in ORIGINAL_BLOCK_KEYS.items():
            if rest.startswith(old + "."):
                return f"{BLOCK_PREFIX}{index}.{new}.{rest[len(old) + 1:]}"
    return key


def _infer_layers(depth: int, feature_count: int,
                  feature_layers: Sequence[int] | None) -> list[int]:
    if feature_layers is not None:
        layers = list(feature_layers)
        if len(layers) != feature_count:
            raise ValueError(f"the discriminator's width says {feature_count} feature layer(s) "
                             f"are concatenated, but feature_layers={layers} has {len(layers)}")
        return layers
    if feature_count != 1:
        raise ValueError(f"the checkpoint concatenates {feature_count} backbone layers; their "
                         "indices cannot be read from the weights: pass feature_layers "
                         "(--feature-layers) as used in training")
    return [min(12, depth)]  # the original's default --feature_layers 12


def convert_original_state_dict(
    state_dict: dict[str, torch.Tensor],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int | None = 224,
    feature_layers: Sequence[int] | None = None,
    reg_layers: Sequence[int] | None = None,
    dsc_heads: int = 4,
    top_k: int = 3,
    dataset: str | None = None,
    class_name: str | None = None,
    source: str = "original PatchGuard state dict",
) -> dict[str, Any]:
    """Convert an original PatchGuard state dict into a patchguard checkpoint dict.

    Shapes give the discriminator depth, hidden width, patch count and the number of
    concatenated feature layers. Not recoverable from weights, hence arguments: the backbone
    name, the discriminator's head count (original default 4), which layers were used as
    features (default: the original's [12]) and regularised (training only). ``image_size=None``
    infers it from the positional encodings. Raises ValueError listing every unused, missing or
    mis-shaped key; the result loads into :class:`PatchGuard` with ``strict=True``.
    """
    state_dict = unwrap_state_dict(state_dict)
    pos_key = "discriminator.positional_encodings"
    if pos_key not in state_dict:
        raise ValueError(f"no {pos_key!r}: not a state dict of the original PatchGuard (keys "
                         f"start with {sorted({k.split('.')[0] for k in state_dict})[:5]})")
    num_patches, width = state_dict[pos_key].shape
    block_ids = sorted({int(k[len(BLOCK_PREFIX):].split(".")[0]) for k in state_dict
                        if k.startswith(BLOCK_PREFIX)})
    if block_ids != list(range(len(block_ids))) or not block_ids:
        raise ValueError(f"discriminator blocks {block_ids}: expected 0..n-1")
    hidden_key = f"{BLOCK_PREFIX}0.linear.0.weight"
    if hidden_key not in state_dict:
        raise ValueError(f"no {hidden_key!r}: the discriminator block does not have the "
                         "original's layout (layer_norm_1, attn, linear)")
    hidden = int(state_dict[hidden_key].shape[0])
    integer("dsc_heads (--dsc-heads)", dsc_heads, 1, fix="the original's default is 4")
    if width % dsc_heads:
        raise InputError("dsc_heads (--dsc-heads)", dsc_heads,
                         f"does not divide the feature width {width}", "the original uses 4")

    vit = create_backbone(backbone, image_size or 224)
    patch = vit.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"{num_patches} positional encodings do not form a square patch grid")
    if image_size is None:
        image_size = grid * patch
    elif image_size // patch != grid or image_size % patch:
        raise ValueError(f"the checkpoint has a {grid}x{grid} patch grid, which is image size "
                         f"{grid * patch} for {backbone} (patch {patch}), not {image_size}")
    if width % vit.embed_dim:
        raise ValueError(f"feature width {width} is not a multiple of {backbone}'s width "
                         f"{vit.embed_dim}: wrong backbone?")
    depth = len(vit.blocks)
    features = _infer_layers(depth, width // vit.embed_dim, feature_layers)
    if reg_layers is None:
        reg_layers = [layer for layer in DEFAULT_REG if layer <= depth] or [depth]
    # By position, as the original's loss zips them; beyond its three, the last one repeats.
    coefficients = [ORIGINAL_COEFFICIENTS[min(i, len(ORIGINAL_COEFFICIENTS) - 1)]
                    for i in range(len(reg_layers))]
    values: dict[str, Any] = dict(
        backbone=backbone, image_size=image_size, pretrained=False,
        feature_layers=features, reg_layers=list(reg_layers), reg_coefficients=coefficients,
        dsc_layers=len(block_ids), dsc_hidden=hidden, dsc_heads=dsc_heads, top_k=top_k,
    )
    if dataset:
        values["dataset"] = dataset
    if class_name:
        values["class_name"] = class_name
    config = TrainConfig(**values)
    model = PatchGuard.from_config(config)
    ours = model.state_dict()

    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, tensor in state_dict.items():
        new = map_original_key(key)
        if new in ours:
            mapped[new] = tensor
        else:
            unused.append(key)
    missing = sorted(set(ours) - set(mapped))
    mismatched = [f"{k}: {tuple(v.shape)} vs ours {tuple(ours[k].shape)}"
                  for k, v in mapped.items() if v.shape != ours[k].shape]
    if unused or missing or mismatched:
        def listing(title: str, names: list[str]) -> str:
            shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all)"
                                             if len(names) > 15 else "")
            return f"\n  {title}: {shown}" if names else ""

        raise ValueError(
            "the state dict does not match the model built from it (backbone "
            f"{backbone!r}, image size {image_size}):" + listing("unused keys", unused)
            + listing("missing keys", missing) + listing("shape mismatches", mismatched)
        )
    model.load_state_dict(mapped, strict=True)
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "epoch": None,
        "weight_source": source,
        "imported_from": source,
        "train_summary": {"dataset": config.dataset, "class_name": config.class_name,
                          "trained_by": "original PatchGuard implementation"},
        "patchguard_version": __version__,
    }


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"cannot load {path} safely ({load_failure(error, path)})") from error
    if isinstance(payload, dict) and {"model", "config", "format_version"} <= set(payload):
        raise ValueError(f"{path} is already a patchguard checkpoint, not one of the original "
                         f"PatchGuard code: use it as it is (patchguard info --checkpoint "
                         f"{path})")
    return unwrap_state_dict(payload)


def names_from_filename(path: str | Path) -> tuple[str | None, str | None]:
    """(dataset, class) from the original's ``patchguard_<dataset>_<class>.pth`` file names."""
    match = _NAME_PATTERN.match(Path(path).stem)
    return (match.group(1), match.group(2)) if match else (None, None)
