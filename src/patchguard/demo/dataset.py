"""Offline demo data set: CC0 textures from scikit-image and a drawn washer, MVTec AD layout.

The demo must run without network, so the "real" anomalies are synthesised (:mod:`.defects`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from ..data.layouts.classes import KNOWN_CLASSES
from .defects import DEFECT_TYPES, add_defect
from .drawing import blur, kernel, smooth_noise, smoothstep

# The class names come from the data layer, where the demo is a data set of its own ("demo").
DEMO_CLASSES: tuple[str, ...] = tuple(KNOWN_CLASSES["demo"])
OBJECT_CLASS = "washer"
TEXTURE_CLASSES: tuple[str, ...] = tuple(c for c in DEMO_CLASSES if c != OBJECT_CLASS)

MARKER_NAME = ".patchguard_demo.json"
# Bump whenever the generated pixels change, so stale on-disk data sets are rebuilt.
_FORMAT_VERSION = 1

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
    height = smoothstep(0.0, bevel, t) * smoothstep(0.0, bevel, 1.0 - t) * (outer * 0.06)
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
    grain = 2.5 * smooth_noise(n, n, 12, rng) + rng.normal(0, 1.2, (n, n)).astype(np.float32)
    shift = outer * 0.07
    # The shadow falls away from the light (azimuth az), a little offset and blurred.
    _, cast = ring_cover(cy - shift * math.sin(az), cx - shift * math.cos(az))
    shadow = blur(cast, outer * 0.05)
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
                    region = cv2.erode(fg.astype(np.uint8), kernel(margin)).astype(bool)
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
