"""A detector head that needs no training: a memory bank of normal patch features, scored by
nearest-neighbour distance (PatchCore-like), differentiable end to end so that every attack runs
on it.

The model follows PatchGuard's protocol (``forward(images, with_attention=False)`` returns an
object with ``.logits`` (B, N), plus ``image_score`` and ``anomaly_map``): its "logits" are each
patch's Euclidean distance to the nearest bank entry, the image score is the mean of the top-k of
them (k = 1: PatchCore's max) and the map is the same upsampling and Gaussian smoothing as
PatchGuard's. So ``patchguard test``, ``predict`` and
:func:`patchguard.api.evaluate_detector` take it as they take PatchGuard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import DEFAULT_BACKBONE
from ..utils.checks import InputError
from .backbone import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, create_backbone
from .patchguard import PatchGuard, PatchGuardOutput, gaussian_kernel1d

CORESET_METHODS = ("random", "greedy")
# Bank rows per distance block: bounds the (B*N, rows) matrix a forward pass holds at once.
_BANK_CHUNK = 4096


def nearest_distances(features: torch.Tensor, bank: torch.Tensor,
                      chunk: int = _BANK_CHUNK) -> torch.Tensor:
    """Euclidean distance (B, N) of each feature (B, N, D) to its nearest row of bank (M, D).

    The squared distances are reduced block by block with a running minimum, so that neither
    the forward pass nor autograd keeps the whole (B*N, M) matrix; the square root comes after
    the minimum, clamped away from 0, so its gradient stays finite for a patch that is in the
    bank.
    """
    if bank.shape[0] == 0:
        raise RuntimeError("the kNN memory bank is empty: train the model (head knn) first")
    # Centred on the bank's mean: the expansion |a|^2 + |b|^2 - 2ab then cancels less (float32).
    centre = bank.float().mean(dim=0)
    flat = features.reshape(-1, features.shape[-1]).float() - centre
    norms = flat.pow(2).sum(-1, keepdim=True)
    best = None
    for block in (bank.float() - centre).split(chunk):
        squared = norms + block.pow(2).sum(-1) - 2.0 * flat @ block.T
        nearest = squared.min(dim=-1).values
        best = nearest if best is None else torch.minimum(best, nearest)
    return best.clamp_min(1e-12).sqrt().reshape(features.shape[:-1])


def select_coreset(features: torch.Tensor, size: int, method: str = "greedy",
                   seed: int = 0, projection_dim: int = 128) -> torch.Tensor:
    """Indices of ``size`` rows of ``features`` (M, D): a random subset, or the greedy k-center
    coreset (each new row the one farthest from those chosen, on a random projection to
    ``projection_dim`` dimensions for speed, as PatchCore does)."""
    count = features.shape[0]
    if size <= 0 or size >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    if method == "random":
        return torch.randperm(count, generator=generator)[:size].sort().values
    if method != "greedy":
        raise InputError("knn_coreset", method, f"must be one of {', '.join(CORESET_METHODS)}")
    points = features.float()
    if points.shape[1] > projection_dim:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator)
        points = points @ (projection / projection_dim ** 0.5)
    chosen = [int(torch.randint(count, (1,), generator=generator))]
    distance = (points - points[chosen[0]]).pow(2).sum(-1)
    for _ in range(size - 1):
        index = int(distance.argmax())
        chosen.append(index)
        distance = torch.minimum(distance, (points - points[index]).pow(2).sum(-1))
    return torch.tensor(sorted(chosen))


class PatchKNN(nn.Module):
    """Patch memory-bank detector: images in [0, 1] to nearest-neighbour patch distances,
    image scores (top-k mean) and pixel maps."""

    def __init__(
        self,
        backbone: str | nn.Module = DEFAULT_BACKBONE,
        image_size: int = 224,
        feature_layers: Sequence[int] = (12,),
        top_k: int = 3,
        map_sigma: float = 6.0,
        map_radius: int = 7,
    ) -> None:
        super().__init__()
        vit = create_backbone(backbone, image_size) if isinstance(backbone, str) else backbone
        self.image_size = image_size
        self.top_k = top_k
        # No regularised layers: nothing is trained, so no attention is captured.
        self.feature_extractor = FeatureExtractor(vit, feature_layers, [])
        self.feature_extractor.check_image_size(image_size)
        dim = self.feature_extractor.embed_dim * len(feature_layers)
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("smoothing_kernel", gaussian_kernel1d(map_sigma, map_radius),
                             persistent=False)

    @classmethod
    def from_config(cls, config) -> PatchKNN:
        """Build from a :class:`patchguard.config.TrainConfig` (the bank stays empty)."""
        return cls(backbone=config.backbone, image_size=config.image_size,
                   feature_layers=config.feature_layers, top_k=config.top_k,
                   map_sigma=config.map_sigma, map_radius=config.map_radius)

    # One implementation of the protocol's geometry, scores and maps: PatchGuard's.
    grid_size = PatchGuard.grid_size
    patch_size = PatchGuard.patch_size
    image_score = PatchGuard.image_score
    anomaly_map = PatchGuard.anomaly_map
    predict = PatchGuard.predict

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the ViT backbone."""
        return list(self.feature_extractor.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """None: the head is a memory bank, not trained by gradient."""
        return []

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (B, N, D) of images (B, 3, H, W) in [0, 1]."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got "
                             f"{tuple(images.shape[-2:])}")
        features, _ = self.feature_extractor((images - self.mean) / self.std,
                                             with_attention=False)
        return features

    def set_bank(self, features: torch.Tensor) -> None:
        """Make ``features`` (M, D) the memory bank."""
        if features.dim() != 2 or features.shape[1] != self.bank.shape[1]:
            raise ValueError(f"bank features must be (M, {self.bank.shape[1]}), got "
                             f"{tuple(features.shape)}")
        self.bank = features.detach().to(self.bank.device, torch.float32).contiguous()

    def forward(self, images: torch.Tensor, with_attention: bool = False) -> PatchGuardOutput:
        """Per-patch nearest-neighbour distances (B, N) as the output's logits; no attention."""
        return PatchGuardOutput(nearest_distances(self.patch_features(images), self.bank), [])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bank's size is known only from the checkpoint: take its shape before loading.
        stored = state_dict.get(prefix + "bank")
        if isinstance(stored, torch.Tensor) and stored.dim() == 2:
            self.bank = torch.zeros_like(stored, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
