"""Backbone state dicts: reading local weight files safely and adapting them to a model."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class BackboneWeightsError(RuntimeError):
    """Raised when no pretrained weights can be found; message says how to provide them."""


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"Backbone weights file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        elif suffix in _TORCH_SUFFIXES:
            # weights_only refuses arbitrary pickled objects, so a weights file cannot run code.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BackboneWeightsError(
                f"Unsupported backbone weights file {path}: expected .safetensors or one of "
                f"{', '.join(_TORCH_SUFFIXES)}"
            )
    except BackboneWeightsError:
        raise
    except Exception as exc:
        raise BackboneWeightsError(
            f"Could not read backbone weights file {path}: {one_line(exc)} "
            "(only plain tensor state dicts are accepted; .pth files are loaded with "
            "weights_only=True)"
        ) from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: pathlib.Path) -> dict[str, torch.Tensor]:
    # Training checkpoints often nest the weights next to optimiser state and metadata.
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next(
                (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)),
                None,
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_dict(obj):
        raise BackboneWeightsError(
            f"Backbone weights file {path} does not contain a state dict of tensors "
            f"(found {type(obj).__name__}"
            + (f" with keys {preview(list(obj))}" if isinstance(obj, Mapping) else "")
            + ")"
        )
    state_dict = {str(k): v for k, v in obj.items()}
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _is_tensor_dict(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, *, antialias: bool = True
) -> dict[str, torch.Tensor]:
    """Resample ``pos_embed`` to the model's patch grid and drop a classifier the model lacks."""
    from timm.layers import resample_abs_pos_embed

    adapted = dict(state_dict)
    if getattr(model, "num_classes", None) == 0:
        adapted = {k: v for k, v in adapted.items() if not k.startswith("head.")}

    pos = adapted.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if (
        isinstance(pos, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and pos.shape != target.shape
        and pos.ndim == 3
        and pos.shape[-1] == target.shape[-1]
    ):
        # Same rule as timm's own checkpoint filter: with no_embed_class the class token has no
        # position embedding, so the whole tensor is the patch grid.
        num_prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        num_patches = pos.shape[1] - num_prefix
        side = math.isqrt(max(num_patches, 0))
        if side * side != num_patches or side == 0:
            raise BackboneWeightsError(
                f"Cannot resample pos_embed of shape {tuple(pos.shape)} to "
                f"{tuple(target.shape)}: {num_patches} patch positions is not a square grid"
            )
        adapted["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(model.patch_embed.grid_size),
            old_size=[side, side],
            num_prefix_tokens=num_prefix,
            antialias=antialias,
        )
    return adapted


def load_strict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str
) -> None:
    """Load ``state_dict`` exactly (every key, every shape) or say what does not match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {preview(mismatched)}")
        raise BackboneWeightsError(
            f"{origin} does not match the {type(model).__name__} backbone (a timm key layout is "
            f"expected); " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


def preview(items: list[str], count: int = 5) -> str:
    """The first ``count`` items joined, and how many more there are."""
    shown = ", ".join(items[:count])
    return shown + (f" (+{len(items) - count} more)" if len(items) > count else "")
