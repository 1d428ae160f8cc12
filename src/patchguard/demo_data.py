"""Offline demo data set: CC0 textures from scikit-image and a drawn washer, MVTec AD layout.

The demo must run without network, so the "real" anomalies are synthesised here.  They are drawn
by dedicated generators (scratches, holes, stains, cracks, foreign matter) that differ in kind
from the cut-paste pseudo anomalies used for training, so that the demo evaluation stays honest.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

OBJECT_CLASS = "washer"
TEXTURE_CLASSES: tuple[str, ...] = ("brick", "grass", "gravel")
DEMO_CLASSES: tuple[str, ...] = (*TEXTURE_CLASSES, OBJECT_CLASS)
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "crack", "foreign")

# Target defect area as a fraction of the image; add_defect resamples until it lands inside.
DEFECT_AREA_RANGE: tuple[float, float] = (0.005, 0.05)

MARKER_NAME = ".patchguard_demo.json"
# Bump whenever the generated pixels change, so stale on-disk data sets are rebuilt.
_FORMAT_VERSION = 1

# A pixel counts as visibly changed above this max-over-channels difference (0..255 scale).
_VISIBLE_DIFF = 12
_MAX_ATTEMPTS = 12
# Mean visible change over the mask: rejects e.g. a green stain that vanishes on green grass.
_MIN_CONTRAST = 24.0

# Texture crops: side length in source pixels, and the largest in-plane rotation.
_CROP_SIDE = 168
_MAX_ROT_DEG = 7.0
# Gap (source px) kept free on both sides of the train/test region borders.
_REGION_GAP = 4

# Duotone (dark, light) colours that turn the grayscale photographs into plausible RGB.
_TINTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "brick": ((30.0, 8.0, 4.0), (250.0, 178.0, 138.0)),
    "grass": ((4.0, 12.0, 0.0), (150.0, 215.0, 96.0)),
    "gravel": ((8.0, 8.0, 10.0), (252.0, 246.0, 236.0)),
}

_STAIN_COLOURS = np.array(
    [[112, 70, 34], [168, 82, 30], [46, 42, 36], [44, 62, 150], [70, 125, 52], [150, 40, 60]],
    dtype=np.float32,
)
_PARTICLE_COLOURS = np.array(
    [[40, 92, 205], [196, 40, 34], [226, 192, 40], [238, 236, 228], [58, 172, 72], [160, 70, 190]],
    dtype=np.float32,
)
_FIBRE_COLOURS = np.array(
    [[28, 20, 14], [62, 40, 24], [224, 218, 200], [30, 50, 170], [180, 30, 40]], dtype=np.float32
)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be given in either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise with unit-ish amplitude: bicubic upsampling of a coarse random grid."""
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (w + 2 * (w // cells + 1), h + 2 * (h // cells + 1)),
                     interpolation=cv2.INTER_CUBIC)
    # Crop off the border cells, where bicubic interpolation is biased by edge replication.
    oy, ox = h // cells + 1, w // cells + 1
    return big[oy:oy + h, ox:ox + w]


def _polar(h: int, w: int, cy: float, cx: float, angle: float, aspect: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical radius (px along the major axis) and polar angle around a centre."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u = dx * ca + dy * sa
    v = (-dx * sa + dy * ca) / aspect
    return np.sqrt(u * u + v * v), np.arctan2(v, u)


def _irregular_radius(theta: np.ndarray, radius: float, irregularity: float,
                      rng: np.random.Generator, harmonics: int = 6) -> np.ndarray:
    """Blob boundary radius r(theta): a base radius perturbed by random low harmonics."""
    r = np.ones_like(theta)
    for k in range(2, harmonics + 1):
        r += irregularity * rng.normal() / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return radius * np.clip(r, 0.45, None)


def _walk(start: np.ndarray, angle: float, length: float, step: float, wiggle: float,
          persistence: float, turn: float, rng: np.random.Generator) -> np.ndarray:
    """Points (y, x) of a random-walk curve; AR(1) heading noise keeps it from drifting away."""
    n = max(int(length / step), 2)
    # AR(1) heading deviation as a causal convolution with persistence**k: no Python loop.
    dev = np.convolve(rng.normal(0.0, wiggle, n), persistence ** np.arange(n))[:n]
    theta = angle + dev + turn * np.arange(n)
    steps = np.stack([np.sin(theta), np.cos(theta)], axis=1) * step
    return np.vstack([start[None, :], start[None, :] + np.cumsum(steps, axis=0)])


def _stroke_alpha(h: int, w: int, strokes: Sequence[tuple[np.ndarray, np.ndarray]],
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


def _taper(n: int, width: float, ends: float = 0.2) -> np.ndarray:
    """Per-segment widths that thin out towards both ends of a stroke, like real scratches."""
    t = np.linspace(0.0, 1.0, n)
    return width * (0.35 + 0.65 * _smoothstep(0.0, ends, np.minimum(t, 1.0 - t)))


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma in px) of a float map."""
    return cv2.GaussianBlur(x, (0, 0), max(sigma, 0.3))


def _kernel(radius: int) -> np.ndarray:
    """Elliptical structuring element of the given radius."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background holes of a 0/1 uint8 mask (flood fill from the border)."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    # Whatever the outside flood could not reach is a hole enclosed by the mask.
    return mask | (flood[1:-1, 1:-1] == 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# defect generators: each takes the clean float image and returns the defective float image
# --------------------------------------------------------------------------------------------

_Drawer = Callable[[np.ndarray, tuple[float, float], float, np.random.Generator],
                   tuple[np.ndarray, bool]]


def _draw_scratch(img: np.ndarray, c: tuple[float, float], s: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """One to three gently curved, tapered lines; bright (scraped metal) or dark (gouge)."""
    h, w = img.shape[:2]
    n_lines = int(rng.choice([1, 1, 2, 3]))
    base_angle = rng.uniform(0, np.pi)
    width = rng.uniform(1.4, 2.8) * s
    strokes, shadow = [], []
    for i in range(n_lines):
        length = rng.uniform(0.22, 0.5) * 224 * s
        step = 1.5 * s
        n = max(int(length / step), 2)
        angle = base_angle + rng.normal(0, 0.08)
        off = np.array([np.cos(angle), -np.sin(angle)]) * (i * rng.uniform(3, 7) * s)
        pts = _walk(np.zeros(2), angle, length, step, 0.01, 0.9, rng.normal(0, 0.6) / n, rng)
        pts = pts - pts.mean(axis=0) + np.array(c) + off
        widths = _taper(len(pts) - 1, width * rng.uniform(0.7, 1.0))
        strokes.append((pts, widths))
        # The raised burr beside a scratch catches light differently: a thin offset line.
        normal = np.array([np.cos(angle), -np.sin(angle)]) * max(1.0, 0.9 * width)
        shadow.append((pts + normal, widths * 0.6))
    alpha = _stroke_alpha(h, w, strokes)[..., None]
    side = _stroke_alpha(h, w, shadow)[..., None] * (1.0 - alpha)
    if rng.random() < 0.6:
        target = rng.uniform(215, 250)
        out = img + (target - img) * alpha * rng.uniform(0.75, 0.95)
        out = out * (1.0 - 0.35 * side)
    else:
        out = img * (1.0 - alpha * rng.uniform(0.6, 0.8))
        out = out + (235.0 - out) * side * 0.3
    return out, False


def _draw_hole(img: np.ndarray, c: tuple[float, float], s: float,
               rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Irregular dark pit with a darker core, a lit inner wall and a soft shadow rim."""
    h, w = img.shape[:2]
    radius = rng.uniform(0.035, 0.07) * 224 * s
    rho, theta = _polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.65, 1.0))
    r_theta = _irregular_radius(theta, radius, 0.35, rng)
    # Fine boundary roughness on top of the low harmonics.
    r_theta = r_theta * (1.0 + 0.06 * _smooth_noise(h, w, max(4, int(w / (6 * s))), rng))
    d = rho / r_theta
    inside = np.clip((r_theta - rho) + 0.5, 0.0, 1.0)
    core = _smoothstep(0.75, 0.15, d)
    light = rng.uniform(0, 2 * np.pi)
    facing = np.cos(theta - light)
    rim = np.exp(-(((d - 1.0) / 0.22) ** 2)) * (d > 1.0)
    out = img * (1.0 - (0.5 * rim * (0.55 + 0.45 * facing))[..., None])
    # Bright lip on the side facing the light.
    out = out + (255.0 - out) * (0.35 * rim * np.clip(-facing, 0, 1))[..., None]
    wall = 0.28 + 0.12 * np.clip(-facing, 0, 1)
    hole = img * (wall * (1.0 - core) + 0.06 * core)[..., None] + 4.0
    return out * (1.0 - inside[..., None]) + hole * inside[..., None], True


def _draw_stain(img: np.ndarray, c: tuple[float, float], s: float,
                rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Translucent colour blotch: thresholded smooth noise with a darker drying ring."""
    h, w = img.shape[:2]
    radius = rng.uniform(0.055, 0.1) * 224 * s
    rho, theta = _polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.6, 1.0))
    r_theta = _irregular_radius(theta, radius, 0.25, rng)
    field = 1.0 - rho / r_theta + 0.35 * _smooth_noise(h, w, max(4, int(w / (9 * s))), rng)
    blob = (field > 0.0).astype(np.float32)
    alpha = _blur(blob, 0.8 * s)
    ring = np.clip(alpha - _blur(cv2.erode(blob, _kernel(max(1, int(2 * s)))), 1.2 * s), 0, 1)
    opacity = rng.uniform(0.45, 0.7)
    # Uneven pigment inside, and more of it in the dried rim ("coffee ring"), reads as a stain.
    mottle = 0.8 + 0.2 * _smooth_noise(h, w, max(4, int(w / (4 * s))), rng)
    a = np.clip(opacity * (0.75 * alpha * mottle + 0.7 * ring), 0, 1)[..., None]
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] * rng.uniform(0.85, 1.15)
    tinted = img * (colour / 255.0) * 0.6 + colour * 0.4
    return img * (1.0 - a) + tinted * a, True


def _draw_crack(img: np.ndarray, c: tuple[float, float], s: float,
                rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Dark, jagged, branching random-walk fissure with a faint dirty halo."""
    h, w = img.shape[:2]
    length = rng.uniform(0.28, 0.5) * 224 * s
    step = 1.6 * s
    angle = rng.uniform(0, 2 * np.pi)
    trunk = _walk(np.zeros(2), angle, length, step, 0.35, 0.75, 0.0, rng)
    trunk = trunk - trunk.mean(axis=0) + np.array(c)
    width = rng.uniform(1.4, 2.6) * s
    strokes = [(trunk, _taper(len(trunk) - 1, width, 0.35))]
    for _ in range(int(rng.integers(2, 5))):
        k = int(rng.integers(len(trunk) // 5, 4 * len(trunk) // 5))
        b_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        b_len = length * rng.uniform(0.15, 0.4)
        branch = _walk(trunk[k], b_angle, b_len, step, 0.4, 0.7, 0.0, rng)
        # Branches start as thick as the trunk at the fork and thin out to a hairline.
        bw = width * np.linspace(0.8, 0.3, len(branch) - 1)
        strokes.append((branch, bw))
    alpha = _stroke_alpha(h, w, strokes)[..., None]
    halo = np.clip(_blur(alpha[..., 0], 1.5 * s) * 1.5, 0, 1)[..., None]
    out = img * (1.0 - 0.25 * halo)
    return out * (1.0 - alpha) + (img * 0.12 + 3.0) * alpha, False


def _draw_foreign(img: np.ndarray, c: tuple[float, float], s: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Foreign matter: either a curly fibre/hair or a shaded coloured particle with a shadow."""
    h, w = img.shape[:2]
    light = rng.uniform(0, 2 * np.pi)
    shadow_off = np.array([-np.sin(light), -np.cos(light)]) * 1.8 * s
    if rng.random() < 0.5:
        length = rng.uniform(0.35, 0.65) * 224 * s
        step = 1.5 * s
        n = int(length / step)
        pts = _walk(np.zeros(2), rng.uniform(0, 2 * np.pi), length, step, 0.06, 0.97,
                    rng.normal(0, 4.0) / n, rng)
        pts = pts - pts.mean(axis=0) + np.array(c)
        widths = _taper(len(pts) - 1, rng.uniform(1.6, 2.6) * s, 0.1)
        alpha = _stroke_alpha(h, w, [(pts, widths)])
        shadow = _blur(_stroke_alpha(h, w, [(pts + shadow_off, widths)]), 1.0 * s)
        colour = _FIBRE_COLOURS[rng.integers(len(_FIBRE_COLOURS))] * rng.uniform(0.9, 1.1)
        body = np.broadcast_to(colour, img.shape).astype(np.float32)
        fill = False
    else:
        radius = rng.uniform(0.03, 0.055) * 224 * s
        rho, theta = _polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.5, 0.95))
        r_theta = _irregular_radius(theta, radius, 0.5, rng, harmonics=4)
        alpha = np.clip((r_theta - rho) + 0.5, 0.0, 1.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rs, _ = _polar(h, w, c[0] + shadow_off[0], c[1] + shadow_off[1], 0.0, 1.0)
        shadow = _blur((rs < radius).astype(np.float32), 1.5 * s)
        colour = _PARTICLE_COLOURS[rng.integers(len(_PARTICLE_COLOURS))]
        # Lit side brighter, plus its own grain, so it reads as a 3-D object of another material.
        lit = ((xx - c[1]) * math.cos(light) + (yy - c[0]) * math.sin(light)) / radius
        shade = 1.0 - 0.25 * np.clip(lit, -1.5, 1.5) - 0.2 * np.clip(rho / r_theta, 0, 1) ** 2
        grain = 1.0 + 0.08 * _smooth_noise(h, w, max(4, int(w / (2.5 * s))), rng)
        body = colour * (shade * grain)[..., None]
        fill = True
    out = img * (1.0 - 0.4 * shadow * (1.0 - alpha))[..., None]
    a = (alpha * rng.uniform(0.85, 1.0))[..., None]
    return out * (1.0 - a) + body * a, fill


_DRAWERS: dict[str, _Drawer] = {
    "scratch": _draw_scratch,
    "hole": _draw_hole,
    "stain": _draw_stain,
    "crack": _draw_crack,
    "foreign": _draw_foreign,
}


def _pick_centre(region: np.ndarray | None, h: int, w: int, s: float,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Random defect centre: inside the (eroded) region, or away from the image border."""
    if region is not None:
        inner = cv2.erode(region.astype(np.uint8), _kernel(max(1, int(4 * s))))
        ys, xs = np.nonzero(inner if inner.any() else region)
        k = int(rng.integers(len(ys)))
        return float(ys[k]) + rng.uniform(-0.5, 0.5), float(xs[k]) + rng.uniform(-0.5, 0.5)
    return float(rng.uniform(0.15, 0.85) * (h - 1)), float(rng.uniform(0.15, 0.85) * (w - 1))


def add_defect(image: np.ndarray, defect_type: str, rng: np.random.Generator,
               region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one realistic defect on a uint8 RGB image; return (defective image, bool mask)."""
    if defect_type not in _DRAWERS:
        raise ValueError(f"unknown defect type {defect_type!r}; expected one of {DEFECT_TYPES}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    reg = None
    if region is not None:
        reg = np.asarray(region).astype(bool)
        if reg.shape != (h, w) or not reg.any():
            raise ValueError("region must be a non-empty HxW mask matching the image")
    s = min(h, w) / 224.0
    clean = img.astype(np.float32)
    clean_i = img.astype(np.int16)
    lo, hi = DEFECT_AREA_RANGE
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(_MAX_ATTEMPTS):
        centre = _pick_centre(reg, h, w, s, rng)
        drawn, fill = _DRAWERS[defect_type](clean, centre, s, rng)
        if reg is not None:
            # Fade the defect out at the object boundary instead of a hard clip on the border.
            soft = np.minimum(_blur(reg.astype(np.float32), 0.7), reg)[..., None]
            drawn = clean + (drawn - clean) * soft
        out = np.clip(np.round(drawn), 0, 255).astype(np.uint8)
        diff = np.abs(out.astype(np.int16) - clean_i).max(axis=2)
        mask = (diff > _VISIBLE_DIFF).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(max(1, int(round(1.5 * s)))))
        if fill:
            # Blob defects are solid: a pixel that was already dark inside a hole is still hole.
            mask = _fill_holes(mask)
        if reg is not None:
            mask &= reg
        mask_b = mask.astype(bool)
        if not mask_b.any():
            continue
        # Sub-threshold tails far from the defect are invisible; drop them so the mask is exact.
        keep = cv2.dilate(mask, _kernel(1)).astype(bool)
        if reg is not None:
            keep &= reg
        result = np.where(keep[..., None], out, img)
        frac = float(mask_b.mean())
        contrast = float(diff[mask_b].mean())
        if lo <= frac <= hi and contrast >= _MIN_CONTRAST:
            return result, mask_b
        # Otherwise remember the attempt that came closest, should every attempt miss.
        miss = (lo / frac if frac < lo else max(frac / hi, 1.0)) * max(
            _MIN_CONTRAST / max(contrast, 1e-3), 1.0)
        if best is None or miss < best[0]:
            best = (miss, result, mask_b)
    if best is None:
        raise RuntimeError(f"could not draw a visible {defect_type!r} defect in the given region")
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# clean images
# --------------------------------------------------------------------------------------------


@functools.cache
def _texture_source(name: str) -> np.ndarray:
    """The tinted RGB float32 version of one scikit-image CC0 photograph (cached)."""
    try:
        import skimage.data
    except ImportError as exc:  # the demo extra is optional; tell the user how to get it
        raise ImportError(
            'the demo data set needs scikit-image: pip install "patchguard[demo]"'
        ) from exc
    photo = np.asarray(getattr(skimage.data, name)())
    if photo.ndim == 3:  # RGB(A) source: reduce to luminance so every class is tinted alike
        photo = cv2.cvtColor(np.ascontiguousarray(photo[..., :3]), cv2.COLOR_RGB2GRAY)
    g = photo.astype(np.float32)[..., None] / 255.0
    dark, light = (np.array(t, np.float32) for t in _TINTS[name])
    return dark + (light - dark) * g


def texture_regions(shape: tuple[int, int], split: str) -> list[tuple[int, int, int, int]]:
    """Source-photo boxes (y0, x0, y1, x1) that crops of a split may use; train/test disjoint."""
    h, w = shape
    my, mx, g = h // 2, w // 2, _REGION_GAP
    quads = {
        "tl": (0, 0, my - g, mx - g),
        "tr": (0, mx + g, my - g, w),
        "bl": (my + g, 0, h, mx - g),
        "br": (my + g, mx + g, h, w),
    }
    # A checkerboard of quadrants: both splits see top/bottom and left/right of the photo,
    # which matters for the brick wall whose perspective changes across the frame.
    names = ("tl", "br") if split == "train" else ("tr", "bl")
    return [quads[n] for n in names]


def _texture_crop(name: str, split: str, size: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, list[int]]:
    """Random rotated/flipped/re-lit crop from the split's regions; returns (image, box)."""
    src = _texture_source(name)
    regions = texture_regions(src.shape[:2], split)
    y0r, x0r, y1r, x1r = regions[int(rng.integers(len(regions)))]
    ang = rng.uniform(-_MAX_ROT_DEG, _MAX_ROT_DEG)
    rad = math.radians(ang)
    # Axis-aligned extent of the rotated square: the footprint that must stay in the region.
    ext = int(math.ceil(_CROP_SIDE * (abs(math.cos(rad)) + abs(math.sin(rad))))) + 2
    by = int(rng.integers(y0r, y1r - ext + 1))
    bx = int(rng.integers(x0r, x1r - ext + 1))
    cy, cx = by + ext / 2.0, bx + ext / 2.0
    m = cv2.getRotationMatrix2D((cx, cy), ang, 1.0)
    m[:, 2] += np.array([_CROP_SIDE / 2.0 - cx, _CROP_SIDE / 2.0 - cy])
    crop = cv2.warpAffine(src, m, (_CROP_SIDE, _CROP_SIDE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    interp = cv2.INTER_AREA if size < _CROP_SIDE else cv2.INTER_CUBIC
    crop = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    gain = rng.uniform(0.92, 1.08) * rng.uniform(0.98, 1.02, 3)
    crop = crop * gain + rng.uniform(-6, 6)
    img = np.clip(np.round(crop), 0, 255).astype(np.uint8)
    return img, [by, bx, by + ext, bx + ext]


def _render_washer(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shaded brushed-steel washer on a matte background; returns (RGB uint8, bool fg mask)."""
    n = size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # Python floats, not numpy float64 scalars, so all maps stay float32 (NEP 50 promotion).
    cy, cx = (float(v) for v in (0.5 + rng.uniform(-0.05, 0.05, 2)) * (n - 1))
    outer = n * 0.34 * rng.uniform(0.95, 1.05)
    tilt = rng.uniform(0.88, 1.0)  # slight out-of-plane pose foreshortens the ring
    phi = rng.uniform(0, np.pi)
    r_in = rng.uniform(0.44, 0.5)

    def ring_cover(oy: float, ox: float) -> tuple[np.ndarray, np.ndarray]:
        """Normalised elliptical radius and analytic anti-aliased coverage of the ring."""
        dy, dx = yy - oy, xx - ox
        u = dx * math.cos(phi) + dy * math.sin(phi)
        v = (-dx * math.sin(phi) + dy * math.cos(phi)) / tilt
        rho = np.sqrt(u * u + v * v) / outer
        # (1 - rho) * outer is ~ the distance in px to the rim: a 1 px ramp is exact-enough AA.
        cover = np.clip((1.0 - rho) * outer + 0.5, 0, 1) * np.clip(
            (rho - r_in) * outer + 0.5, 0, 1)
        return rho, cover

    rho, ring = ring_cover(cy, cx)
    t = np.clip((rho - r_in) / (1.0 - r_in), 0.0, 1.0)
    bevel = 0.16
    height = _smoothstep(0.0, bevel, t) * _smoothstep(0.0, bevel, 1.0 - t) * (outer * 0.06)
    gy, gx = np.gradient(height)
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    nx, ny, nz = -gx / norm, -gy / norm, 1.0 / norm
    az = -2.3 + rng.uniform(-0.45, 0.45)
    el = rng.uniform(0.6, 0.95)
    lx, ly, lz = math.cos(az) * math.sin(el), math.sin(az) * math.sin(el), math.cos(el)
    diffuse = np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)
    hx, hy, hz = lx, ly, lz + 1.0
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((nx * hx + ny * hy + nz * hz) / hn, 0.0, 1.0) ** 40
    # Concentric brushing: per-radius random brightness, and the bow-tie anisotropic sheen.
    rings = rng.standard_normal(160).astype(np.float32)
    brushed = 1.0 + 0.05 * np.interp(rho, np.linspace(0, 1, 160, dtype=np.float32), rings)
    ang = np.arctan2(yy - cy, xx - cx)
    sheen = 1.0 + 0.16 * np.cos(2.0 * (ang - (az + np.pi / 2)))
    steel = np.array([172, 176, 184], np.float32) * rng.uniform(0.92, 1.05)
    lum = (0.3 + 0.7 * diffuse) * brushed * sheen * rng.uniform(0.92, 1.08)
    metal = steel * lum[..., None] + (255.0 * 0.55 * spec)[..., None]

    bg_col = np.array([86, 92, 98], np.float32) * rng.uniform(0.9, 1.1)
    g_ang = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / n - 0.5) * math.cos(g_ang) + (yy / n - 0.5) * math.sin(g_ang)) * 0.16
    grain = 2.5 * _smooth_noise(n, n, 12, rng) + rng.normal(0, 1.2, (n, n)).astype(np.float32)
    shift = outer * 0.07
    # The shadow falls away from the light (azimuth az), a little offset and blurred.
    _, cast = ring_cover(cy - shift * math.sin(az), cx - shift * math.cos(az))
    shadow = _blur(cast, outer * 0.05)
    bg = (bg_col * (1.0 + ramp)[..., None] + grain[..., None]) * (1.0 - 0.4 * shadow)[..., None]

    img = bg * (1.0 - ring[..., None]) + metal * ring[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8), ring >= 0.5


# --------------------------------------------------------------------------------------------
# data set writer
# --------------------------------------------------------------------------------------------


def _image_rng(seed: int, cls: str, split: int, index: int) -> np.random.Generator:
    """Independent stream per (seed, class, split, image) so counts don't shift other images."""
    return np.random.default_rng([seed, DEMO_CLASSES.index(cls), split, index])


def _save_png(path: pathlib.Path, arr: np.ndarray) -> None:
    """Write a uint8 RGB or bool/L image as PNG (deterministic bytes, fast compression)."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    # cv2's encoder is faster than PIL's and writes no timestamps; a fixed filter skips libpng's
    # per-row filter search, which otherwise dominates the build time (older cv2 lacks it).
    flags = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        flags += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, buf = cv2.imencode(".png", arr, flags)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _write_class(out: pathlib.Path, cls: str, p: dict[str, Any]) -> dict[str, Any]:
    """Render every image of one class into directory out; return its crop-box bookkeeping."""
    size = p["image_size"]
    is_object = cls == OBJECT_CLASS
    crops: dict[str, list[int]] = {}
    # Keep object defects a little inside the washer so they never spill onto the table.
    margin = max(1, int(round(2 * size / 224)))

    def clean(split: str, split_id: int, index: int, name: str
              ) -> tuple[np.ndarray, np.ndarray | None, np.random.Generator]:
        """Clean image, foreground mask (object only) and the rng that continues its stream."""
        rng = _image_rng(p["seed"], cls, split_id, index)
        if is_object:
            img, fg = _render_washer(size, rng)
            return img, fg, rng
        img, box = _texture_crop(cls, split, size, rng)
        crops[name] = box
        return img, None, rng

    dirs = ["train/good", "test/good"] + [f"{k}/{d}" for d in DEFECT_TYPES
                                          for k in ("test", "ground_truth")]
    if is_object:
        dirs.append("train/foreground_mask")
    for d in dirs:
        (out / d).mkdir(parents=True)
    # PNG encoding releases the GIL, so a couple of writer threads overlap it with rendering.
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = []

        def save(rel: str, arr: np.ndarray) -> None:
            jobs.append(pool.submit(_save_png, out / rel, arr))

        for i in range(p["n_train"]):
            name = f"train/good/{i:03d}.png"
            img, fg, _ = clean("train", 0, i, name)
            save(name, img)
            if fg is not None:
                save(f"train/foreground_mask/{i:03d}.png", fg)
        for i in range(p["n_test_good"]):
            name = f"test/good/{i:03d}.png"
            img, _, _ = clean("test", 1, i, name)
            save(name, img)
        for d_id, dtype in enumerate(DEFECT_TYPES):
            for i in range(p["n_test_per_defect"]):
                name = f"test/{dtype}/{i:03d}.png"
                img, fg, rng = clean("test", 2 + d_id, i, name)
                region = None
                if fg is not None:
                    region = cv2.erode(fg.astype(np.uint8), _kernel(margin)).astype(bool)
                bad, mask = add_defect(img, dtype, rng, region)
                save(name, bad)
                save(f"ground_truth/{dtype}/{i:03d}_mask.png", mask)
        for job in jobs:
            job.result()  # re-raise any write error here, inside the temp-dir cleanup
    return {"crops": crops} if crops else {}


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    """Parsed JSON file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_demo_dataset(root: str | os.PathLike, classes: Sequence[str] | None = None,
                       image_size: int = 224, n_train: int = 60, n_test_good: int = 20,
                       n_test_per_defect: int = 6, seed: int = 0,
                       overwrite: bool = False) -> pathlib.Path:
    """Write the demo data set in the MVTec AD layout under root and return root."""
    names = DEMO_CLASSES if classes is None else tuple(classes)
    unknown = [c for c in names if c not in DEMO_CLASSES]
    if unknown:
        raise ValueError(f"unknown demo classes {unknown}; expected a subset of {DEMO_CLASSES}")
    if image_size < 32:
        raise ValueError("image_size must be at least 32")
    if min(n_train, n_test_good, n_test_per_defect) < 1:
        raise ValueError("n_train, n_test_good and n_test_per_defect must all be >= 1")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "version": _FORMAT_VERSION,
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "seed": int(seed),
    }
    for cls in names:
        target = root / cls
        marker = _read_json(target / MARKER_NAME)
        if not overwrite and marker is not None and marker.get("params") == params:
            continue  # already complete: the marker is only present after an atomic rename
        # Build beside the target and rename into place: an interrupted build leaves only a
        # hidden temp directory, never a class folder that looks complete.
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{cls}.building-", dir=root))
        try:
            info = _write_class(tmp, cls, params)
            (tmp / MARKER_NAME).write_text(
                json.dumps({"class": cls, "params": params, **info}, indent=1))
            if target.exists():
                trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{cls}.old-", dir=root))
                os.replace(target, trash / cls)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    summary = json.dumps({"params": params, "classes": list(names),
                          "defect_types": list(DEFECT_TYPES)}, indent=1)
    top = root / MARKER_NAME
    # Rewrite the summary only when it changed, so a no-op call touches nothing on disk.
    if not top.exists() or top.read_text() != summary:
        top.write_text(summary)
    return root
