"""Uploaded images: checked and decoded, every refusal an :class:`UploadError` with an HTTP
status and a message naming the upload (the server answers it and stays up).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import pil_to_rgb, resize_image

#: Formats decoded from untrusted uploads (no EPS, which PIL hands to Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300; PIL's own bomb limit is 89 million


class UploadError(ValueError):
    """A refused upload: ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An uploaded file as uint8 RGB (H, W, 3); UploadError 400 / 413 / 415 otherwise.

    The pixel count is read from the header and checked before anything is decoded, so a small
    file that claims a huge image (a decompression bomb) costs no memory.
    """
    if not data:
        raise UploadError(400, f"{name}: the upload is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image (readable formats: "
                          f"{', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"{name}: refused as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UploadError(400, f"{name}: the image header is corrupt ({error})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(413, f"{name}: {width} x {height} pixels is more than the "
                              f"server's limit of {max_pixels} (a decompression bomb, or an "
                              "image to downscale before sending)")
        try:
            with warnings.catch_warnings():
                # Below our own limit PIL's bomb warning says nothing new.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            return pil_to_rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) \
                as error:
            raise UploadError(400, f"{name}: the image is corrupt or truncated "
                              f"({error})") from None


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """A decoded image resized as test images are (LANCZOS), float32 in [0, 1]."""
    return resize_image(image, size).astype(np.float32) / 255.0
