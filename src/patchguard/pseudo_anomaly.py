"""Foreground-aware pseudo anomalies: cut a patch, augment it, rotate it and paste it elsewhere.

Everything here is numpy / OpenCV / Pillow only (no torch), deterministic given the
``np.random.Generator`` that is passed in, and free of module-level mutable state, so that
instances can be pickled into DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "AUGMENTATION_POOLS",
    "LOWER_BOUNDS_224",
    "SEVERITY_LEVELS",
    "SEVERITY_PARAMS",
    "SEVERITY_PROBS",
    "PseudoAnomalyGenerator",
    "apply_augmentation",
    "augment_patch",
    "find_patch_locations",
    "min_patch_size",
    "perlin_noise",
    "sample_augmentations",
    "sample_severity",
]

# Lower bound of the pasted patch side, in pixels at 224 px; "*" is the per-dataset default.
LOWER_BOUNDS_224: dict[str, dict[str, int]] = {
    "mvtec": {
        "*": 14,
        "screw": 9,
        "toothbrush": 14,
        "cable": 14,
        "transistor": 14,
        "capsule": 14,
        "bottle": 14,
        "hazelnut": 14,
        "metal_nut": 14,
        "pill": 14,
        "zipper": 14,
        "wood": 14,
        "carpet": 14,
        "grid": 14,
        "leather": 14,
        "tile": 14,
    },
    "visa": {
        "*": 14,
        "capsules": 6,
        "fryum": 6,
        "cashew": 10,
        "candle": 14,
        "chewinggum": 14,
        "macaroni1": 14,
        "macaroni2": 14,
        "pcb1": 14,
        "pcb2": 14,
        "pcb3": 14,
        "pcb4": 14,
        "pipe_fryum": 14,
    },
    "mpdd": {
        "*": 14,
        "bracket_black": 6,
        "bracket_brown": 6,
        "bracket_white": 6,
        "connector": 6,
        "tubes": 6,
        "metal_plate": 14,
    },
    "btad": {"*": 14, "01": 9, "02": 14, "03": 9},
    "dtd": {"*": 14},
    "wfdd": {"*": 9},
    "brats2021": {"*": 14},
    "headct": {"*": 9},
}
_DEFAULT_BOUND_224 = 14

SEVERITY_LEVELS: tuple[str, ...] = ("light", "medium", "heavy")
SEVERITY_PROBS: tuple[float, ...] = (0.2, 0.2, 0.6)

# Ranges are inclusive (lo, hi); integer parameters are drawn with rng.integers(lo, hi + 1).
SEVERITY_PARAMS: dict[str, dict[str, tuple[float, float] | float | int]] = {
    "light": {
        "max_augmentations": 1,
        "jitter_bcs": (0.1, 0.1),
        "jitter_hue": 0.1,
        "elastic_alpha": (10.0, 20.0),
        "torn_lines": (1, 3),
        "perlin_scale": (20.0, 50.0),
        "perlin_threshold": (200, 255),
        "swirl_strength": (0.5, 1.0),
        "erase_area": (0.01, 0.05),
        "erase_count": (1, 2),
        "blur_radius": (0.2, 0.5),
        "jpeg_quality": (30, 50),
    },
    "medium": {
        "max_augmentations": 2,
        "jitter_bcs": (0.4, 0.4),
        "jitter_hue": 0.3,
        "elastic_alpha": (20.0, 40.0),
        "torn_lines": (5, 10),
        "perlin_scale": (10.0, 20.0),
        "perlin_threshold": (150, 200),
        "swirl_strength": (1.0, 1.5),
        "erase_area": (0.05, 0.1),
        "erase_count": (2, 3),
        "blur_radius": (0.8, 1.5),
        "jpeg_quality": (20, 30),
    },
    "heavy": {
        "max_augmentations": 4,
        "jitter_bcs": (0.8, 1.0),
        "jitter_hue": 0.5,
        "elastic_alpha": (40.0, 100.0),
        "torn_lines": (10, 20),
        "perlin_scale": (5.0, 10.0),
        "perlin_threshold": (128, 150),
        "swirl_strength": (1.5, 2.0),
        "erase_area": (0.1, 0.2),
        "erase_count": (3, 5),
        "blur_radius": (2.0, 3.0),
        "jpeg_quality": (1, 20),
    },
}

# The colour jitter is not part of any pool: it is always inserted at a random position.
AUGMENTATION_POOLS: dict[str, tuple[str, ...]] = {
    "light": ("gaussian_blur", "elastic", "swirl"),
    "medium": ("gaussian_blur", "swirl", "jpeg", "elastic"),
    "heavy": (
        "elastic",
        "torn_paper",
        "jpeg",
        "perlin",
        "swirl",
        "random_erasing",
        "gaussian_blur",
    ),
}

_ELASTIC_SIGMA = 3.0
_PERLIN_TABLE = 256


def min_patch_size(dataset: str, class_name: str, image_size: int) -> int:
    """Return the class's lower bound of the patch side, scaled from 224 px to ``image_size``."""
    bounds = LOWER_BOUNDS_224.get(dataset.lower())
    if bounds is None:
        bound = _DEFAULT_BOUND_224
    else:
        key = class_name.lower()
        if dataset.lower() == "btad" and key.isdigit():
            # BTAD classes are "01".."03"; accept "1" or "3" as well.
            key = key.zfill(2)
        bound = bounds.get(key, bounds.get("*", _DEFAULT_BOUND_224))
    return max(2, round(bound * image_size / 224))


def sample_severity(rng: np.random.Generator) -> str:
    """Draw a severity level: light / medium / heavy with p = 0.2 / 0.2 / 0.6."""
    return SEVERITY_LEVELS[int(rng.choice(len(SEVERITY_LEVELS), p=SEVERITY_PROBS))]


def perlin_noise(
    shape: tuple[int, int], scale: float, rng: np.random.Generator, octaves: int = 6
) -> np.ndarray:
    """Return vectorised fractal Perlin (gradient) noise as float32 in [-1, 1].

    Octave ``o`` has a lattice period of ``scale / 2**o`` pixels and amplitude ``0.5**o``.
    Gradients come from a 256-entry hashed table (classic Perlin), so the cost does not grow
    with the lattice size of the fine octaves. Random draws, in order: a permutation of 256,
    256 gradient angles, then an (octaves, 2) array of lattice offsets in [0, 256).
    """
    h, w = int(shape[0]), int(shape[1])
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}")
    perm = rng.permutation(_PERLIN_TABLE)
    angles = rng.uniform(0.0, 2.0 * np.pi, _PERLIN_TABLE)
    grad_x, grad_y = np.cos(angles), np.sin(angles)
    # Random offsets stop every octave's lattice from sharing a zero at the origin.
    offsets = rng.uniform(0.0, float(_PERLIN_TABLE), size=(octaves, 2))

    total = np.zeros((h, w), dtype=np.float64)
    amplitude, amplitude_sum = 1.0, 0.0
    for o in range(octaves):
        period = scale / (2.0**o)
        u = np.arange(w, dtype=np.float64) / period + offsets[o, 0]
        v = np.arange(h, dtype=np.float64) / period + offsets[o, 1]
        i0 = np.floor(u).astype(np.int64)
        j0 = np.floor(v).astype(np.int64)
        fx = (u - i0)[None, :]
        fy = (v - j0)[:, None]
        # Lattice hashing is separable: perm[(perm[i] + j) % 256].
        pi0 = perm[i0 % _PERLIN_TABLE][None, :]
        pi1 = perm[(i0 + 1) % _PERLIN_TABLE][None, :]
        jj0 = (j0 % _PERLIN_TABLE)[:, None]
        jj1 = ((j0 + 1) % _PERLIN_TABLE)[:, None]

        def corner(pi: np.ndarray, jj: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            g = perm[(pi + jj) % _PERLIN_TABLE]
            return grad_x[g] * dx + grad_y[g] * dy

        n00 = corner(pi0, jj0, fx, fy)
        n10 = corner(pi1, jj0, fx - 1.0, fy)
        n01 = corner(pi0, jj1, fx, fy - 1.0)
        n11 = corner(pi1, jj1, fx - 1.0, fy - 1.0)
        sx = fx * fx * fx * (fx * (fx * 6.0 - 15.0) + 10.0)
        sy = fy * fy * fy * (fy * (fy * 6.0 - 15.0) + 10.0)
        nx0 = n00 + sx * (n10 - n00)
        nx1 = n01 + sx * (n11 - n01)
        total += amplitude * (nx0 + sy * (nx1 - nx0))
        amplitude_sum += amplitude
        amplitude *= 0.5
    # 2-D gradient noise with unit gradients is bounded by sqrt(2)/2; rescale that bound to 1.
    return (total * (math.sqrt(2.0) / amplitude_sum)).astype(np.float32)


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


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _int_between(rng: np.random.Generator, bounds: tuple[float, float]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def _gray(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _color_jitter(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """ColorJitter semantics: brightness/contrast/saturation/hue factors, in a random order."""
    j_b, j_c, j_s = (_uniform(rng, params["jitter_bcs"]) for _ in range(3))
    factors = [float(rng.uniform(max(0.0, 1.0 - j), 1.0 + j)) for j in (j_b, j_c, j_s)]
    hue = float(rng.uniform(-params["jitter_hue"], params["jitter_hue"]))
    img = patch.astype(np.float32)
    for op in rng.permutation(4):
        if op == 0:
            img = np.clip(img * factors[0], 0.0, 255.0)
        elif op == 1:
            mean = float(_gray(img).mean())
            img = np.clip(img * factors[1] + mean * (1.0 - factors[1]), 0.0, 255.0)
        elif op == 2:
            gray = _gray(img)[..., None]
            img = np.clip(img * factors[2] + gray * (1.0 - factors[2]), 0.0, 255.0)
        else:
            # HSV_FULL maps the hue circle onto 0..255, so a shift is a uint8 wrap-around add.
            hsv = cv2.cvtColor(np.rint(img).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            shift = int(round(hue * 256.0)) % 256
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    return np.rint(img).astype(np.uint8)


def _gaussian_blur(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    radius = _uniform(rng, params["blur_radius"])
    return np.asarray(Image.fromarray(patch).filter(ImageFilter.GaussianBlur(radius)))


def _elastic(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    alpha = _uniform(rng, params["elastic_alpha"])
    h, w = patch.shape[:2]
    fields = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    dx = cv2.GaussianBlur(fields[0], (0, 0), _ELASTIC_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    dy = cv2.GaussianBlur(fields[1], (0, 0), _ELASTIC_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = grid_x + dx * alpha
    map_y = grid_y + dy * alpha
    return cv2.remap(
        patch, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _swirl(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    strength = _uniform(rng, params["swirl_strength"])
    h, w = patch.shape[:2]
    sigma = max(1, min(h, w) // 3)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = grid_x - (w - 1) / 2.0
    dy = grid_y - (h - 1) / 2.0
    theta = strength * np.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    map_x = (w - 1) / 2.0 + dx * cos_t - dy * sin_t
    map_y = (h - 1) / 2.0 + dx * sin_t + dy * cos_t
    return cv2.remap(
        patch,
        map_x.astype(np.float32),
        map_y.astype(np.float32),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _jpeg(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    quality = _int_between(rng, params["jpeg_quality"])
    # OpenCV codecs expect BGR; converting keeps the chroma subsampling on the right channels.
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(patch, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        return patch
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _torn_paper(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    out = np.ascontiguousarray(patch).copy()
    h, w = out.shape[:2]
    for _ in range(_int_between(rng, params["torn_lines"])):
        horizontal = bool(rng.integers(0, 2))
        length, across = (w, h) if horizontal else (h, w)
        n_vertices = int(rng.integers(3, 8))
        along = np.linspace(0.0, length - 1, n_vertices)
        # A jagged random walk across the patch looks like a tear rather than a ruled line.
        walk = rng.uniform(0, across - 1) + np.cumsum(
            rng.normal(0.0, max(1.0, 0.15 * across), n_vertices)
        )
        walk = np.clip(walk, 0, across - 1)
        pts = np.stack([along, walk] if horizontal else [walk, along], axis=1)
        colour = (255, 255, 255) if rng.integers(0, 2) else (0, 0, 0)
        cv2.polylines(out, [np.rint(pts).astype(np.int32)], False, colour, 1, cv2.LINE_8)
    return out


def _perlin_mask(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    scale = _uniform(rng, params["perlin_scale"])
    threshold = _int_between(rng, params["perlin_threshold"])
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    noise = perlin_noise(patch.shape[:2], scale, rng)
    lo, hi = float(noise.min()), float(noise.max())
    if hi <= lo:
        return patch
    scaled = (noise - lo) * (255.0 / (hi - lo))
    out = patch.copy()
    out[scaled > threshold] = colour
    return out


def _random_erasing(patch: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    out = patch.copy()
    h, w = out.shape[:2]
    log_lo, log_hi = math.log(0.3), math.log(3.3)
    for _ in range(_int_between(rng, params["erase_count"])):
        area = _uniform(rng, params["erase_area"]) * h * w
        aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
        eh = min(h, max(1, int(round(math.sqrt(area * aspect)))))
        ew = min(w, max(1, int(round(math.sqrt(area / aspect)))))
        top = int(rng.integers(0, h - eh + 1))
        left = int(rng.integers(0, w - ew + 1))
        out[top : top + eh, left : left + ew] = rng.integers(0, 256, 3).astype(np.uint8)
    return out


_AUGMENTATIONS: dict[str, Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]] = {
    "color_jitter": _color_jitter,
    "gaussian_blur": _gaussian_blur,
    "elastic": _elastic,
    "swirl": _swirl,
    "jpeg": _jpeg,
    "torn_paper": _torn_paper,
    "perlin": _perlin_mask,
    "random_erasing": _random_erasing,
}


def sample_augmentations(level: str, rng: np.random.Generator) -> list[str]:
    """Draw the augmentation sequence of a level: n from its pool plus an inserted colour jitter."""
    pool = AUGMENTATION_POOLS[level]
    n = int(rng.integers(0, int(SEVERITY_PARAMS[level]["max_augmentations"]) + 1))
    names = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    names.insert(int(rng.integers(0, n + 1)), "color_jitter")
    return names


def apply_augmentation(
    patch: np.ndarray, name: str, level: str, rng: np.random.Generator
) -> np.ndarray:
    """Apply one named augmentation with the level's parameter ranges to a uint8 RGB patch."""
    return _AUGMENTATIONS[name](patch, SEVERITY_PARAMS[level], rng)


def augment_patch(patch: np.ndarray, level: str, rng: np.random.Generator) -> np.ndarray:
    """Apply a freshly sampled augmentation sequence of the given level to a uint8 RGB patch."""
    out = np.ascontiguousarray(patch)
    for name in sample_augmentations(level, rng):
        out = apply_augmentation(out, name, level, rng)
    return out


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
