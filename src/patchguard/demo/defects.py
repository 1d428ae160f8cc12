"""Synthetic defects of the demo's test images: scratches, holes, stains, cracks, foreign matter.

They are drawn by dedicated generators that differ in kind from the cut-paste pseudo anomalies
used for training, so that the demo evaluation stays honest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from .drawing import (
    blur,
    fill_holes,
    irregular_radius,
    kernel,
    polar,
    smooth_noise,
    smoothstep,
    stroke_alpha,
    taper,
    walk,
)

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "crack", "foreign")

# Target defect area as a fraction of the image; add_defect resamples until it lands inside.
DEFECT_AREA_RANGE: tuple[float, float] = (0.005, 0.05)

# A pixel counts as visibly changed above this max-over-channels difference (0..255 scale).
_VISIBLE_DIFF = 12
_MAX_ATTEMPTS = 12
# Mean visible change over the mask: rejects e.g. a green stain that vanishes on green grass.
_MIN_CONTRAST = 24.0


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
        pts = walk(np.zeros(2), angle, length, step, 0.01, 0.9, rng.normal(0, 0.6) / n, rng)
        pts = pts - pts.mean(axis=0) + np.array(c) + off
        widths = taper(len(pts) - 1, width * rng.uniform(0.7, 1.0))
        strokes.append((pts, widths))
        # The raised burr beside a scratch catches light differently: a thin offset line.
        normal = np.array([np.cos(angle), -np.sin(angle)]) * max(1.0, 0.9 * width)
        shadow.append((pts + normal, widths * 0.6))
    alpha = stroke_alpha(h, w, strokes)[..., None]
    side = stroke_alpha(h, w, shadow)[..., None] * (1.0 - alpha)
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
    rho, theta = polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.65, 1.0))
    r_theta = irregular_radius(theta, radius, 0.35, rng)
    # Fine boundary roughness on top of the low harmonics.
    r_theta = r_theta * (1.0 + 0.06 * smooth_noise(h, w, max(4, int(w / (6 * s))), rng))
    d = rho / r_theta
    inside = np.clip((r_theta - rho) + 0.5, 0.0, 1.0)
    core = smoothstep(0.75, 0.15, d)
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
    rho, theta = polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.6, 1.0))
    r_theta = irregular_radius(theta, radius, 0.25, rng)
    field = 1.0 - rho / r_theta + 0.35 * smooth_noise(h, w, max(4, int(w / (9 * s))), rng)
    blob = (field > 0.0).astype(np.float32)
    alpha = blur(blob, 0.8 * s)
    ring = np.clip(alpha - blur(cv2.erode(blob, kernel(max(1, int(2 * s)))), 1.2 * s), 0, 1)
    opacity = rng.uniform(0.45, 0.7)
    # Uneven pigment inside, and more of it in the dried rim ("coffee ring"), reads as a stain.
    mottle = 0.8 + 0.2 * smooth_noise(h, w, max(4, int(w / (4 * s))), rng)
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
    trunk = walk(np.zeros(2), angle, length, step, 0.35, 0.75, 0.0, rng)
    trunk = trunk - trunk.mean(axis=0) + np.array(c)
    width = rng.uniform(1.4, 2.6) * s
    strokes = [(trunk, taper(len(trunk) - 1, width, 0.35))]
    for _ in range(int(rng.integers(2, 5))):
        k = int(rng.integers(len(trunk) // 5, 4 * len(trunk) // 5))
        b_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        b_len = length * rng.uniform(0.15, 0.4)
        branch = walk(trunk[k], b_angle, b_len, step, 0.4, 0.7, 0.0, rng)
        # Branches start as thick as the trunk at the fork and thin out to a hairline.
        bw = width * np.linspace(0.8, 0.3, len(branch) - 1)
        strokes.append((branch, bw))
    alpha = stroke_alpha(h, w, strokes)[..., None]
    halo = np.clip(blur(alpha[..., 0], 1.5 * s) * 1.5, 0, 1)[..., None]
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
        pts = walk(np.zeros(2), rng.uniform(0, 2 * np.pi), length, step, 0.06, 0.97,
                    rng.normal(0, 4.0) / n, rng)
        pts = pts - pts.mean(axis=0) + np.array(c)
        widths = taper(len(pts) - 1, rng.uniform(1.6, 2.6) * s, 0.1)
        alpha = stroke_alpha(h, w, [(pts, widths)])
        shadow = blur(stroke_alpha(h, w, [(pts + shadow_off, widths)]), 1.0 * s)
        colour = _FIBRE_COLOURS[rng.integers(len(_FIBRE_COLOURS))] * rng.uniform(0.9, 1.1)
        body = np.broadcast_to(colour, img.shape).astype(np.float32)
        fill = False
    else:
        radius = rng.uniform(0.03, 0.055) * 224 * s
        rho, theta = polar(h, w, c[0], c[1], rng.uniform(0, np.pi), rng.uniform(0.5, 0.95))
        r_theta = irregular_radius(theta, radius, 0.5, rng, harmonics=4)
        alpha = np.clip((r_theta - rho) + 0.5, 0.0, 1.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rs, _ = polar(h, w, c[0] + shadow_off[0], c[1] + shadow_off[1], 0.0, 1.0)
        shadow = blur((rs < radius).astype(np.float32), 1.5 * s)
        colour = _PARTICLE_COLOURS[rng.integers(len(_PARTICLE_COLOURS))]
        # Lit side brighter, plus its own grain, so it reads as a 3-D object of another material.
        lit = ((xx - c[1]) * math.cos(light) + (yy - c[0]) * math.sin(light)) / radius
        shade = 1.0 - 0.25 * np.clip(lit, -1.5, 1.5) - 0.2 * np.clip(rho / r_theta, 0, 1) ** 2
        grain = 1.0 + 0.08 * smooth_noise(h, w, max(4, int(w / (2.5 * s))), rng)
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
        inner = cv2.erode(region.astype(np.uint8), kernel(max(1, int(4 * s))))
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
            soft = np.minimum(blur(reg.astype(np.float32), 0.7), reg)[..., None]
            drawn = clean + (drawn - clean) * soft
        out = np.clip(np.round(drawn), 0, 255).astype(np.uint8)
        diff = np.abs(out.astype(np.int16) - clean_i).max(axis=2)
        mask = (diff > _VISIBLE_DIFF).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel(max(1, int(round(1.5 * s)))))
        if fill:
            # Blob defects are solid: a pixel that was already dark inside a hole is still hole.
            mask = fill_holes(mask)
        if reg is not None:
            mask &= reg
        mask_b = mask.astype(bool)
        if not mask_b.any():
            continue
        # Sub-threshold tails far from the defect are invisible; drop them so the mask is exact.
        keep = cv2.dilate(mask, kernel(1)).astype(bool)
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
