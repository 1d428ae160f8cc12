"""Inputs of the detector: files, folders (recursive), globs and in-memory images, each turned
into a float image in [0, 1] the way test images are.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import IMAGE_EXTENSIONS, is_image_file, pil_to_rgb, read_image, resize_image

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor
_GLOB_CHARS = set("*?[")


def expand_inputs(
    inputs: ImageInput | Iterable[ImageInput],
) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """Expand files, folders (recursive), globs and in-memory images into (name, source) items.

    Returns the items in a stable order and the inputs that matched nothing, with a reason.
    """
    if isinstance(inputs, (str, Path, Image.Image, np.ndarray)) or (
        isinstance(inputs, torch.Tensor) and inputs.ndim == 3
    ):
        inputs = [inputs]
    items: list[tuple[str, Any]] = []
    failed: list[tuple[str, str]] = []
    counter = 0
    for entry in inputs:
        if isinstance(entry, (str, Path)):
            path = Path(entry).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if is_image_file(p))
                if not found:
                    failed.append((str(entry), "folder holds no images "
                                   f"({', '.join(IMAGE_EXTENSIONS)})"))
                items.extend((str(p), p) for p in found)
            elif path.exists() or not (_GLOB_CHARS & set(str(entry))):
                # An explicit file is always tried, whatever its extension; a missing one fails.
                items.append((str(path), path))
            else:
                matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
                found = [p for p in matches if is_image_file(p)]
                if not found:
                    failed.append((str(entry), "no image files match this pattern"))
                items.extend((str(p), p) for p in found)
        elif isinstance(entry, torch.Tensor) and entry.ndim == 4:
            for image in entry:
                items.append((f"<tensor {counter}>", image))
                counter += 1
        else:
            kind = "image" if isinstance(entry, Image.Image) else type(entry).__name__
            items.append((f"<{kind} {counter}>", entry))
            counter += 1
    return items, failed


def _resize_float(image: np.ndarray, size: int) -> np.ndarray:
    """LANCZOS resize of a float (H, W, 3) image without quantising it to 8 bits first."""
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
            (size, size), Image.LANCZOS))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def load_input(source: Any, size: int) -> np.ndarray:
    """One input as a float32 (size, size, 3) image in [0, 1] (LANCZOS resize, as in testing).

    Paths are read with :func:`patchguard.data.images.read_image`. Arrays: uint8 in [0, 255] or
    float in [0, 1]; (H, W), (H, W, 1|3|4) or channel-first (1|3, H, W). Tensors: float (3, H, W)
    in [0, 1].
    """
    if isinstance(source, Path):
        return resize_image(read_image(source), size).astype(np.float32) / 255.0
    if isinstance(source, Image.Image):
        return resize_image(pil_to_rgb(source), size).astype(np.float32) / 255.0
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().float().numpy()
    if not isinstance(source, np.ndarray):
        raise TypeError(f"unsupported input type {type(source).__name__}: give a path, a PIL "
                        "image, a numpy array or a torch tensor")
    array = source
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"array of shape {source.shape} is not an image (H, W[, 1|3|4])")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        # Flatten transparency onto black, as read_image does for files.
        alpha = array[..., 3:].astype(np.float32)
        alpha = alpha / 255.0 if array.dtype == np.uint8 else alpha
        array = (array[..., :3].astype(np.float32) * alpha).astype(array.dtype)
    if array.dtype == np.uint8:
        return resize_image(np.ascontiguousarray(array), size).astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"array dtype {array.dtype}: give uint8 in [0, 255] or float in [0, 1]")
    if not np.all(np.isfinite(array)) or array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError("float images must hold finite values in [0, 1]")
    return _resize_float(np.clip(array, 0.0, 1.0), size)
