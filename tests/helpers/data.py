"""Generated data sets and the stored reference fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# The authors' tiny reference model and outputs, and their ViT-S/14 key list (README there).
REFERENCE_DIR = Path(__file__).parents[1] / "fixtures" / "reference"


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A blocky random texture (uint8 RGB), like a fabric or a surface."""
    base = rng.normal(128, 20, (size // 4, size // 4, 3))
    image = np.kron(base, np.ones((4, 4, 1)))[:size, :size]
    return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


def make_mvtec_class(
    root: Path,
    name: str = "widget",
    n_train: int = 8,
    n_good: int = 4,
    n_bad: int = 4,
    size: int = 80,
    masks: bool = True,
    foreground: bool = True,
    seed: int = 0,
) -> Path:
    """Write a small MVTec-layout class with square bright defects and optional masks."""
    rng = np.random.default_rng(seed)
    cls = root / name
    for sub in ("train/good", "test/good", "test/spot"):
        (cls / sub).mkdir(parents=True, exist_ok=True)
    if foreground:
        (cls / "train/foreground_mask").mkdir(parents=True, exist_ok=True)
    if masks:
        (cls / "ground_truth/spot").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size)).save(cls / f"train/good/{i:03d}.png")
        if foreground:
            fg = np.zeros((size, size), np.uint8)
            fg[size // 8 : -size // 8, size // 8 : -size // 8] = 255
            Image.fromarray(fg).save(cls / f"train/foreground_mask/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(texture(rng, size)).save(cls / f"test/good/{i:03d}.png")
    for i in range(n_bad):
        image = texture(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(size // 8, size // 2, 2)
        image[y : y + size // 4, x : x + size // 4] = 250
        mask[y : y + size // 4, x : x + size // 4] = 255
        Image.fromarray(image).save(cls / f"test/spot/{i:03d}.png")
        if masks:
            Image.fromarray(mask).save(cls / f"ground_truth/spot/{i:03d}_mask.png")
    return cls
