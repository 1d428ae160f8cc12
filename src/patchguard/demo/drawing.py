"""Small numpy drawing helpers of the synthetic demo data: noise, strokes, blurs and masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be given in either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise with unit-ish amplitude: bicubic upsampling of a coarse random grid."""
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (w + 2 * (w // cells + 1), h + 2 * (h // cells + 1)),
                     interpolation=cv2.INTER_CUBIC)
    # Crop off the border cells, where bicubic interpolation is biased by edge replication.
    oy, ox = h // cells + 1, w // cells + 1
    return big[oy:oy + h, ox:ox + w]


def polar(h: int, w: int, cy: float, cx: float, angle: float, aspect: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical radius (px along the major axis) and polar angle around a centre."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u = dx * ca + dy * sa
    v = (-dx * sa + dy * ca) / aspect
    return np.sqrt(u * u + v * v), np.arctan2(v, u)


def irregular_radius(theta: np.ndarray, radius: float, irregularity: float,
                      rng: np.random.Generator, harmonics: int = 6) -> np.ndarray:
    """Blob boundary radius r(theta): a base radius perturbed by random low harmonics."""
    r = np.ones_like(theta)
    for k in range(2, harmonics + 1):
        r += irregularity * rng.normal() / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return radius * np.clip(r, 0.45, None)


def walk(start: np.ndarray, angle: float, length: float, step: float, wiggle: float,
          persistence: float, turn: float, rng: np.random.Generator) -> np.ndarray:
    """Points (y, x) of a random-walk curve; AR(1) heading noise keeps it from drifting away."""
    n = max(int(length / step), 2)
    # AR(1) heading deviation as a causal convolution with persistence**k: no Python loop.
    dev = np.convolve(rng.normal(0.0, wiggle, n), persistence ** np.arange(n))[:n]
    theta = angle + dev + turn * np.arange(n)
    steps = np.stack([np.sin(theta), np.cos(theta)], axis=1) * step
    return np.vstack([start[None, :], start[None, :] + np.cumsum(steps, axis=0)])


def stroke_alpha(h: int, w: int, strokes: Sequence[tuple[np.ndarray, np.ndarray]],
                  supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of polylines with per-segment widths (px)."""
    ss = supersample
    canvas = np.zeros((h * ss, w * ss), np.uint8)
    for pts, widths in strokes:
        # Pixel-centre convention for the supersampled grid, 4 fractional bits for cv2.
        p = np.round((pts[:, ::-1] * ss + (ss - 1) / 2.0) * 16).astype(np.int32)
        for k in range(len(p) - 1):
            thick = max(1, int(round(widths[k] * ss)))
            cv2.line(canvas, (int(p[k, 0]), int(p[k, 1])), (int(p[k + 1, 0]), int(p[k + 1, 1])),
                     255, thick, cv2.LINE_AA, 4)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def taper(n: int, width: float, ends: float = 0.2) -> np.ndarray:
    """Per-segment widths that thin out towards both ends of a stroke, like real scratches."""
    t = np.linspace(0.0, 1.0, n)
    return width * (0.35 + 0.65 * smoothstep(0.0, ends, np.minimum(t, 1.0 - t)))


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma in px) of a float map."""
    return cv2.GaussianBlur(x, (0, 0), max(sigma, 0.3))


def kernel(radius: int) -> np.ndarray:
    """Elliptical structuring element of the given radius."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background holes of a 0/1 uint8 mask (flood fill from the border)."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    # Whatever the outside flood could not reach is a hole enclosed by the mask.
    return mask | (flood[1:-1, 1:-1] == 0).astype(np.uint8)
