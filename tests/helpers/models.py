"""Tiny models and configs: timm's test ViT at 64 px, random weights, seeded."""

from __future__ import annotations

from pathlib import Path

import torch

from patchguard.config import TrainConfig
from patchguard.models.patchguard import PatchGuard

TINY_BACKBONE = "test_vit"  # timm's own test ViT: patch 16, width 64, 6 blocks, 2 heads
TINY_SIZE = 64  # 4 x 4 patches


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
