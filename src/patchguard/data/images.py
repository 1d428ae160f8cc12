"""Reading and resizing images and masks: every mode (grayscale, RGBA, palette, 16-bit, float)
becomes uint8 RGB the same way, whether it comes from a file or from memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# What PIL raises for a file it cannot decode (truncated, not an image, unsupported mode), or
# refuses to decode: a header claiming more than twice Image.MAX_IMAGE_PIXELS (a decompression
# bomb) raises DecompressionBombError, which is not an OSError.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                  Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """A visible file with one of :data:`IMAGE_EXTENSIONS`."""
    return (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
            and not path.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside folder, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode as uint8 RGB (H, W, 3).

    16-bit scans map their full range to 8 bits (PIL's own conversion would clip), float images
    are min-max scaled, and transparency is flattened onto black, as the image would be seen
    without alpha.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        array = ((array - array.min()) / span * 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read any common image file as uint8 RGB (H, W, 3); DatasetError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb(img)
    except FileNotFoundError as error:
        raise DatasetError(f"image file not found: {path}") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot read image {path} ({error}); replace or delete the file"
        ) from error


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a uint8 (H, W) array; any non-zero channel counts as set."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except FileNotFoundError as error:
        raise DatasetError(f"mask file not found: {path}") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(f"cannot read mask {path} ({error}); replace or delete it") from error
    if array.ndim == 3:
        array = array.max(axis=2)
    return (array > 0).astype(np.uint8) * 255


def image_dimensions(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """(width, height) of an image file, from its header unless ``decode``; DatasetError if bad."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return img.size
    except FileNotFoundError as error:
        raise DatasetError(f"file not found: {path}") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(f"unreadable file {path} ({error})") from error


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 RGB image to size x size with LANCZOS (as the original)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.array(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def resize_mask(mask: np.ndarray, size: int, resample: int = Image.NEAREST) -> np.ndarray:
    """Resize a 0/255 mask to size x size and return it as 0/1 float32."""
    if mask.shape[0] != size or mask.shape[1] != size:
        mask = np.asarray(Image.fromarray(mask).resize((size, size), resample))
    return (mask > 0).astype(np.float32)
