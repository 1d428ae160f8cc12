"""The pseudo-anomaly generator: cut a patch inside the foreground, augment it, rotate it and
paste it elsewhere in the foreground.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .augmentations import augment_patch
from .severity import sample_severity


def _run_lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return, per pixel, the number of consecutive True pixels to the right and downwards."""

    def downwards(m: np.ndarray) -> np.ndarray:
        rows = np.arange(m.shape[0], dtype=np.int32)[:, None]
        # Row index of the nearest False pixel at or below each pixel (the height if none).
        blockers = np.where(m, np.int32(m.shape[0]), rows)
        nearest = np.minimum.accumulate(blockers[::-1], axis=0)[::-1]
        return nearest - rows

    # Accumulating along axis 0 is vectorised over columns, so work on the transpose for rows.
    right = downwards(np.ascontiguousarray(mask.T)).T
    return np.ascontiguousarray(right), downwards(mask)


def find_patch_locations(
    foreground: np.ndarray,
    min_size: int,
    rng: np.random.Generator,
    max_tries: int = 250,
    size_draws: int = 10,
    size_scale: float = 1.0,
) -> tuple[int, int, int, int, int, int]:
    """Sample (x1, y1, x2, y2, w, h): source and destination rectangles inside the foreground.

    ``foreground`` is the already-dilated bool mask. Up to ``max_tries`` point pairs are drawn,
    each with ``size_draws`` draws of w, h uniform in [0, the smaller run of foreground to the
    right / downwards from the two points]; the first pair whose rectangles both lie in the
    foreground with w, h >= ``min_size`` wins. Otherwise a ``min_size`` patch (clipped to the
    image) is placed at random foreground points. ``size_scale`` (<= 1) shrinks the maximum size.
    """
    fg = np.asarray(foreground).astype(bool)
    if fg.ndim != 2:
        raise ValueError(f"foreground must be 2-D, got shape {fg.shape}")
    height, width = fg.shape
    if not fg.any():
        # No foreground means no object to avoid leaving: the whole image is allowed.
        fg = np.ones_like(fg)
    min_size = max(1, int(min_size))

    right, down = _run_lengths(fg)
    # Points whose runs are shorter than min_size can never be accepted, so dropping them keeps
    # the distribution of accepted results and only makes success within max_tries likelier.
    cand_y, cand_x = np.nonzero((right >= min_size) & (down >= min_size))
    if cand_y.size:
        # Summed-area table of the background: a rectangle is inside iff its sum is zero.
        outside = cv2.integral((~fg).view(np.uint8))

        def inside(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
            count = outside[y + h, x + w] - outside[y, x + w] - outside[y + h, x] + outside[y, x]
            return count == 0

        chunk = 25  # tries per vectorised batch: enough for easy masks, little waste
        for start in range(0, max_tries, chunk):
            n = min(chunk, max_tries - start)
            i1 = rng.integers(0, cand_y.size, n)
            i2 = rng.integers(0, cand_y.size, n)
            x1, y1, x2, y2 = cand_x[i1], cand_y[i1], cand_x[i2], cand_y[i2]
            max_w = np.minimum(right[y1, x1], right[y2, x2])
            max_h = np.minimum(down[y1, x1], down[y2, x2])
            if size_scale != 1.0:
                max_w = np.clip(np.floor(max_w * size_scale).astype(np.int64), min_size, max_w)
                max_h = np.clip(np.floor(max_h * size_scale).astype(np.int64), min_size, max_h)
            w = rng.integers(0, max_w[:, None] + 1, size=(n, size_draws))
            h = rng.integers(0, max_h[:, None] + 1, size=(n, size_draws))
            bx1, by1 = x1[:, None], y1[:, None]
            bx2, by2 = x2[:, None], y2[:, None]
            ok = (w >= min_size) & (h >= min_size)
            ok &= inside(bx1, by1, w, h) & inside(bx2, by2, w, h)
            hits = np.flatnonzero(ok)
            if hits.size:
                t, d = divmod(int(hits[0]), size_draws)
                return (
                    int(x1[t]),
                    int(y1[t]),
                    int(x2[t]),
                    int(y2[t]),
                    int(w[t, d]),
                    int(h[t, d]),
                )

    # Fallback: a lower-bound-sized patch at random foreground points, kept inside the image.
    pw, ph = min(min_size, width), min(min_size, height)
    ys, xs = np.nonzero(fg)
    i1, i2 = rng.integers(0, ys.size, 2)
    x1, y1 = min(int(xs[i1]), width - pw), min(int(ys[i1]), height - ph)
    x2, y2 = min(int(xs[i2]), width - pw), min(int(ys[i2]), height - ph)
    return x1, y1, x2, y2, pw, ph


class PseudoAnomalyGenerator:
    """Foreground-aware pseudo anomalies (cut, augment, rotate, paste)."""

    def __init__(
        self,
        min_size: int,
        dilation_iterations: int = 10,
        max_tries: int = 250,
        size_scale: float = 1.0,
    ):
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        if not 0.0 < size_scale <= 1.0:
            raise ValueError(f"size_scale must be in (0, 1], got {size_scale}")
        self.min_size = int(min_size)
        self.dilation_iterations = int(dilation_iterations)
        self.max_tries = int(max_tries)
        self.size_scale = float(size_scale)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_size={self.min_size}, "
            f"dilation_iterations={self.dilation_iterations}, max_tries={self.max_tries}, "
            f"size_scale={self.size_scale})"
        )

    def dilate(self, foreground: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
        """Return the bool foreground dilated by a 3x3 kernel (all True if None or empty)."""
        if foreground is None:
            return np.ones(shape, dtype=bool)
        fg = np.asarray(foreground)
        if fg.shape != shape:
            raise ValueError(f"foreground shape {fg.shape} does not match image shape {shape}")
        fg = fg > 0.5
        if not fg.any():
            # An empty mask carries no information about the object: allow the whole image.
            return np.ones(shape, dtype=bool)
        if self.dilation_iterations > 0 and not fg.all():
            fg = cv2.dilate(
                fg.astype(np.uint8),
                np.ones((3, 3), np.uint8),
                iterations=self.dilation_iterations,
            ).astype(bool)
        return fg

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (pseudo-anomalous uint8 HxWx3 image, float32 HxW 0/1 mask of the pasted patch)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        fg = self.dilate(foreground, (height, width))
        x1, y1, x2, y2, w, h = find_patch_locations(
            fg, self.min_size, rng, max_tries=self.max_tries, size_scale=self.size_scale
        )

        patch = augment_patch(image[y1 : y1 + h, x1 : x1 + w].copy(), sample_severity(rng), rng)

        rgba = np.dstack([patch, np.full((h, w), 255, dtype=np.uint8)])
        angle = float(rng.uniform(-90.0, 90.0))
        rotated = Image.fromarray(rgba).rotate(angle, expand=True)
        pasted = np.asarray(rotated.resize((w, h), Image.Resampling.BICUBIC))
        alpha = pasted[..., 3]
        if not alpha.any():
            # Cannot happen for w, h >= 2 (the centre stays opaque); guarantees a non-empty mask.
            pasted, alpha = rgba, rgba[..., 3]

        out = image.copy()
        region = out[y2 : y2 + h, x2 : x2 + w]
        a = alpha.astype(np.uint16)[..., None]
        blended = (
            pasted[..., :3].astype(np.uint16) * a + region.astype(np.uint16) * (255 - a) + 127
        ) // 255
        inside = alpha > 0
        region[inside] = blended[inside].astype(np.uint8)

        mask = np.zeros((height, width), dtype=np.float32)
        mask[y2 : y2 + h, x2 : x2 + w] = inside
        return out, mask
