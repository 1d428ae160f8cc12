"""Shared fixtures: a tiny generated MVTec-layout data set and a tiny random ViT config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchguard.config import TrainConfig
from patchguard.models.patchguard import PatchGuard

# The authors' tiny reference model and outputs, and their ViT-S/14 key list (README there).
REFERENCE_DIR = Path(__file__).parent / "fixtures" / "reference"
TINY_BACKBONE = "test_vit"  # timm's own test ViT: patch 16, width 64, 6 blocks, 2 heads
TINY_SIZE = 64  # 4 x 4 patches


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tiny models gain nothing from threads, and
    on a shared 2-core machine the extra threads only spin (measured on test_reference.py under
    load: 24 s with two threads, 8 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**kwargs) -> PatchGuard:
    """A randomly initialised tiny PatchGuard (seeded), in train mode."""
    torch.manual_seed(0)
    values = dict(backbone=TINY_BACKBONE, image_size=TINY_SIZE, feature_layers=[3],
                  reg_layers=[2, 3], dsc_hidden=32)
    values.update(kwargs)
    return PatchGuard(**values)


class QuantisedInput(torch.nn.Module):
    """A model whose input is rounded first: zero gradients, the classic masking trap."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.patch_size = model.patch_size
        self.image_size = model.image_size

    def forward(self, x, with_attention=True):
        return self.model(torch.round(x * 4) / 4, with_attention=with_attention)

    def predict(self, x):
        with torch.no_grad():
            logits = self.forward(x, with_attention=False).logits
        return self.model.image_score(logits), self.model.anomaly_map(logits)

    def image_score(self, logits):
        return self.model.image_score(logits)

    def anomaly_map(self, logits):
        return self.model.anomaly_map(logits)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
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
        Image.fromarray(_texture(rng, size)).save(cls / f"train/good/{i:03d}.png")
        if foreground:
            fg = np.zeros((size, size), np.uint8)
            fg[size // 8 : -size // 8, size // 8 : -size // 8] = 255
            Image.fromarray(fg).save(cls / f"train/foreground_mask/{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_texture(rng, size)).save(cls / f"test/good/{i:03d}.png")
    for i in range(n_bad):
        image = _texture(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(size // 8, size // 2, 2)
        image[y : y + size // 4, x : x + size // 4] = 250
        mask[y : y + size // 4, x : x + size // 4] = 255
        Image.fromarray(image).save(cls / f"test/spot/{i:03d}.png")
        if masks:
            Image.fromarray(mask).save(cls / f"ground_truth/spot/{i:03d}_mask.png")
    return cls


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Root of a tiny MVTec-layout data set with one class, 'widget'."""
    root = tmp_path_factory.mktemp("data")
    make_mvtec_class(root)
    return root


def tiny_config(data_root: Path, output_dir: Path, **overrides) -> TrainConfig:
    """A config that trains in about a second: tiny random ViT, 64 px, 2 epochs."""
    values = dict(
        dataset="mvtec", dataset_dir=str(data_root), class_name="widget",
        output_dir=str(output_dir), image_size=TINY_SIZE, backbone=TINY_BACKBONE,
        pretrained=False, feature_layers=[3], reg_layers=[2, 3], reg_coefficients=[0.01, 0.05],
        dsc_hidden=64, epochs=2, batch_size=4, steps_train=2, workers=0, device="cpu", save_every=1,
    )
    values.update(overrides)
    return TrainConfig(**values)
