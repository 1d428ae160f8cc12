"""Reading and resizing images and masks: every mode (grayscale, RGBA, palette, 16-bit, float)
becomes uint8 RGB the same way, whether it comes from a file or from memory.

The one safe reader: every image and mask file patchguard reads goes through :func:`open_image`,
which decodes only the formats of :data:`FORMATS`, recognised from the file's bytes (never its
suffix), under PIL's decompression-bomb limit. PIL knows formats whose decoders run external
programs (EPS and PostScript through Ghostscript) or are rarely exercised; an ``.png`` holding
one of those is refused, never handed to its decoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The formats decoded from files (PIL's names), whatever the file is called.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Images outside these bounds are read but warned about: resizing them to the model's square
#: input squeezes (aspect) or invents (size) the detail a defect is made of.
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 16, 16384, 4.0

# Signatures of formats that are refused, for a message that says what the file is.
_SIGNATURES = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"),
               (b"GIF8", "GIF"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"\x00\x00\x01\x00",
               "ICO"), (b"8BPS", "Photoshop"), (b"PK\x03\x04", "zip"))

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


class UnsupportedFormat(UnidentifiedImageError):
    """A file that is not one of :data:`FORMATS` (checked from its bytes)."""


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return ""
    for signature, name in _SIGNATURES:
        if head.lstrip().startswith(signature):
            return f" (its bytes look like {name})"
    return ""


def open_image(path: str | Path) -> Image.Image:
    """Open an image file with PIL, allowing only :data:`FORMATS` (from the bytes).

    Raises :class:`UnsupportedFormat` for anything else, and PIL's own errors for a damaged
    file; the caller decodes (``load()``) and closes it.
    """
    path = Path(path)
    try:
        return Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedFormat(
            f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image{_sniff(path)}; only these "
            "formats are read, whatever the file name says") from None


def size_note(width: int, height: int) -> str | None:
    """Why an image of this size is probably not meant (outside the documented range), or None."""
    if min(width, height) < MIN_SIDE:
        return (f"is {width}x{height} pixels, smaller than {MIN_SIDE} px on a side: resizing it "
                "to the model's input invents its detail")
    if max(width, height) > MAX_SIDE:
        return (f"is {width}x{height} pixels, more than {MAX_SIDE} px on a side: resizing it to "
                "the model's input loses small defects; crop or tile it first")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return (f"is {width}x{height} pixels, an aspect ratio beyond {MAX_ASPECT:g}:1: it is "
                "squeezed into the model's square input; crop or tile it first")
    return None


_warned_sizes: set[str] = set()


def warn_size(name: str, width: int, height: int) -> None:
    """Log :func:`size_note` once per input name."""
    note = size_note(width, height)
    if note and name not in _warned_sizes:
        _warned_sizes.add(name)
        logger.warning("image %s %s", name, note)


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
        with open_image(path) as img:
            img.load()
            warn_size(str(path), *img.size)
            return pil_to_rgb(img)
    except FileNotFoundError as error:
        raise DatasetError(f"image file not found: {path}") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot read image {path} ({error}); replace or delete the file"
        ) from error


def read_raw_mask(path: str | Path) -> np.ndarray:
    """A mask file's values as an (H, W) array (the largest channel of a colour mask)."""
    path = Path(path)
    try:
        with open_image(path) as img:
            array = np.asarray(img)
    except FileNotFoundError as error:
        raise DatasetError(f"mask file not found: {path}") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(f"cannot read mask {path} ({error}); replace or delete it") from error
    return array.max(axis=2) if array.ndim == 3 else array


def mask_problem(values: np.ndarray, path: str | Path) -> str | None:
    """What is wrong with a ground-truth mask of an anomalous image, or None.

    Every non-zero pixel counts as defect (:func:`read_mask`); that is right for 0/1 and 0/255
    masks, and wrong for an empty mask (nothing to localise), a soft or noisy one (grey levels
    or specks all become defect).
    """
    if values.size == 0 or not np.any(values):
        return (f"mask {path} is empty (all zero) although its image is anomalous: there is "
                "nothing to localise; draw the defect, or move the image to test/good")
    levels = np.unique(values)
    set_fraction = float(np.mean(values > 0))
    if levels.size > 2:
        faint = " faint," if float(levels[-1]) < 0.5 * _full_scale(values) else ""
        return (f"mask {path} is not binary ({levels.size} grey levels,{faint} largest "
                f"{levels[-1]:g}): every non-zero pixel counts as defect, {set_fraction:.0%} of "
                "the image; save it with two values (0 and 255)")
    if set_fraction > 0.5:
        return (f"mask {path} marks {set_fraction:.0%} of the image as defect: noise or an "
                "inverted mask? defects are the non-zero pixels")
    mask = values > 0
    # Noise: most set pixels lie on an edge (a drawn defect is a few solid regions).
    inner = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
             & mask[1:-1, 2:])
    edge = 1.0 - float(inner.sum()) / max(float(mask.sum()), 1.0)
    import cv2

    count = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    if (set_fraction > 0.05 and edge > 0.8) or count > 50:
        return (f"mask {path} looks like noise ({set_fraction:.0%} of the image in {count} "
                "scattered regions): every non-zero pixel counts as defect")
    return None


def _full_scale(values: np.ndarray) -> float:
    if values.dtype == np.bool_:
        return 1.0
    if np.issubdtype(values.dtype, np.integer):
        return float(np.iinfo(values.dtype).max) if values.dtype.itemsize > 1 else 255.0
    return 1.0


_warned_masks: set[str] = set()


def read_mask(path: str | Path, ground_truth: bool = False) -> np.ndarray:
    """Read a mask file as a uint8 (H, W) array; any non-zero channel counts as set.

    A ``ground_truth`` mask (of an anomalous test image) that is empty, non-binary or noisy is
    read all the same, with a warning naming it (once); ``patchguard data info`` lists them.
    """
    values = read_raw_mask(path)
    problem = mask_problem(values, path) if ground_truth else None
    if problem and str(path) not in _warned_masks:
        _warned_masks.add(str(path))
        logger.warning(problem)
    return (values > 0).astype(np.uint8) * 255


def image_dimensions(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """(width, height) of an image file of :data:`FORMATS`, from its header unless ``decode``;
    DatasetError naming the file if it is bad or of another format."""
    path = Path(path)
    try:
        with open_image(path) as img:
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
