"""The patch augmentations of the pseudo-anomaly generator, Perlin noise as array code, and the
sampling of an augmentation sequence per severity level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageFilter

from .severity import AUGMENTATION_POOLS, SEVERITY_PARAMS

_ELASTIC_SIGMA = 3.0
_PERLIN_TABLE = 256


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
