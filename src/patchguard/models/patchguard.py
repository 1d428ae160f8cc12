"""The PatchGuard network: a ViT feature extractor and a per-patch transformer discriminator.

The model takes images in [0, 1] and normalises them itself, so that attacks operate in pixel
space (docs/method.md, section 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DEFAULT_BACKBONE
from ..utils.checks import InputError
from .backbone import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, create_backbone
from .kernels import linear, use_cpu_linear


@dataclass
class PatchGuardOutput:
    """Forward result: per-patch logits and the regularised layers' patch attention."""

    logits: torch.Tensor  # (B, N)
    attentions: list[torch.Tensor]  # each (B, heads, N, N), patch-to-patch block


class DiscriminatorBlock(nn.Module):
    """Post-norm attention + residual MLP block (LayerNorm(x + MHA), then x + MLP)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        # Attention-weight dropout as in the original's nn.MultiheadAttention(dropout=0.2).
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )
        self.mlp_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, N, D) tokens."""
        x = self.norm(x + self.dropout(self_attention(self.attention, x)))
        return x + self.mlp_dropout(self.mlp(x))


def self_attention(module: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``module(x, x, x, need_weights=False)[0]`` for batch-first ``x``, projections by oneDNN.

    The steps of ``F.multi_head_attention_forward`` for self-attention (packed in-projection,
    scaled dot-product attention with the module's dropout in training, out-projection), so the
    same dropout masks are drawn; only the projections go through
    :func:`patchguard.models.kernels.linear` (nn.MultiheadAttention calls F.linear itself).
    """
    batch, tokens, dim = x.shape
    heads = module.num_heads
    qkv = linear(x, module.in_proj_weight, module.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    dropout = module.dropout if module.training else 0.0
    attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    attended = attended.transpose(1, 2).reshape(batch, tokens, dim)
    return linear(attended, module.out_proj.weight, module.out_proj.bias)


class Discriminator(nn.Module):
    """Per-patch classifier: learned positional encoding, transformer blocks, a logit per patch."""

    def __init__(
        self,
        num_patches: int,
        dim: int,
        layers: int = 1,
        heads: int = 4,
        hidden: int = 2048,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.positional_encodings = nn.Parameter(torch.randn(num_patches, dim))
        self.transformer_encoder = nn.ModuleList(
            DiscriminatorBlock(dim, heads, hidden, dropout) for _ in range(layers)
        )
        self.output_layer = nn.Sequential(nn.Linear(dim, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map (B, N, D) features to (B, N) logits."""
        x = features + self.positional_encodings
        for block in self.transformer_encoder:
            x = block(x)
        return self.output_layer(x).squeeze(-1)


def _eager() -> bool:
    """False while tracing, exporting or compiling (the compiled function must not nest)."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export() or (exporting is not None and exporting()))


def patch_targets(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch labels (B, N): 1 where any pixel of the (B, [1,] H, W) mask inside the patch is > 0."""
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    pooled = F.max_pool2d((masks > 0).float(), kernel_size=patch_size, stride=patch_size)
    return pooled.flatten(1)


def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian weights on [-radius, radius], as scipy.ndimage uses them."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).float()


def gaussian_blur(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps with scipy's default 'reflect' boundary."""
    radius = (kernel.numel() - 1) // 2
    x = maps.unsqueeze(1)
    for dim in (-1, -2):
        # scipy's 'reflect' repeats the edge sample (d c b a | a b c d); F.pad has no such mode.
        size = x.shape[dim]
        reps = min(radius, size)
        head = x.narrow(dim, 0, reps).flip(dim)
        tail = x.narrow(dim, size - reps, reps).flip(dim)
        padded = torch.cat([head, x, tail], dim=dim)
        shape = (1, 1, 1, -1) if dim == -1 else (1, 1, -1, 1)
        weight = kernel.to(x).view(shape)
        x = F.conv2d(padded, weight)
    return x.squeeze(1)


class PatchGuard(nn.Module):
    """PatchGuard detector: images in [0, 1] to patch logits, image scores and pixel maps."""

    def __init__(
        self,
        backbone: str | nn.Module = DEFAULT_BACKBONE,
        image_size: int = 224,
        feature_layers: Sequence[int] = (12,),
        reg_layers: Sequence[int] = (6, 9, 12),
        dsc_layers: int = 1,
        dsc_heads: int = 4,
        dsc_hidden: int = 2048,
        dsc_dropout: float = 0.2,
        top_k: int = 3,
        map_sigma: float = 6.0,
        map_radius: int = 7,
    ) -> None:
        super().__init__()
        vit = create_backbone(backbone, image_size) if isinstance(backbone, str) else backbone
        self.image_size = image_size
        self.top_k = top_k
        self.feature_extractor = FeatureExtractor(vit, feature_layers, reg_layers)
        self.feature_extractor.check_image_size(image_size)
        grid = self.feature_extractor.grid_size
        dim = self.feature_extractor.embed_dim * len(feature_layers)
        if dsc_heads < 1 or dim % dsc_heads:
            raise InputError("dsc_heads", dsc_heads,
                             f"must be a positive divisor of the discriminator's width {dim} "
                             f"({len(feature_layers)} feature layer(s) x "
                             f"{self.feature_extractor.embed_dim})", "the paper uses 4")
        self.discriminator = Discriminator(
            grid * grid, dim, dsc_layers, dsc_heads, dsc_hidden, dsc_dropout
        )
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "smoothing_kernel", gaussian_kernel1d(map_sigma, map_radius), persistent=False
        )
        # fp32 CPU linears through oneDNN (MKL's sgemm runs AVX2 kernels on AMD CPUs); plain
        # F.linear on GPUs, under autocast, export and compile.
        use_cpu_linear(self)

    @classmethod
    def from_config(cls, config) -> PatchGuard:
        """Build from a :class:`patchguard.config.TrainConfig` (or anything with its fields)."""
        return cls(
            backbone=config.backbone,
            image_size=config.image_size,
            feature_layers=config.feature_layers,
            reg_layers=config.reg_layers,
            dsc_layers=config.dsc_layers,
            dsc_heads=config.dsc_heads,
            dsc_hidden=config.dsc_hidden,
            dsc_dropout=config.dsc_dropout,
            top_k=config.top_k,
            map_sigma=config.map_sigma,
            map_radius=config.map_radius,
        )

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.feature_extractor.grid_size

    @property
    def patch_size(self) -> int:
        """Pixels per patch side."""
        return self.feature_extractor.patch_size

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the ViT backbone."""
        return list(self.feature_extractor.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of everything but the backbone (the discriminator)."""
        return list(self.discriminator.parameters())

    def forward(self, images: torch.Tensor, with_attention: bool = True) -> PatchGuardOutput:
        """Patch logits (B, N) and patch attentions for images (B, 3, H, W) in [0, 1]."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}"
            )
        if not with_attention and self._compiled_logits is not None and _eager():
            return PatchGuardOutput(self._compiled_logits(images), [])
        x = (images - self.mean) / self.std
        features, attentions = self.feature_extractor(x, with_attention=with_attention)
        return PatchGuardOutput(self.discriminator(features), attentions)

    _compiled_logits = None  # set by compile_attack

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        features, _ = self.feature_extractor(x, with_attention=False)
        return self.discriminator(features)

    def compile_attack(self, backend: str = "inductor", **options) -> None:
        """torch.compile the forward pass without attention: every attack step and predict().

        Without attention the capture hooks do nothing, so the whole network (backbone and
        discriminator) compiles as one graph; the training forward, which needs the captured
        attention, stays as it is. Pays off on GPUs; on CPUs compiled code gives up the oneDNN
        linears of :mod:`.kernels` and is slower. Recompiles per grad mode, train/eval mode
        and batch size (a few graphs in a run).
        """
        self._compiled_logits = torch.compile(self._logits, backend=backend, **options)

    def image_score(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean of the top-k patch logits per image."""
        k = min(self.top_k, logits.shape[-1])
        return logits.topk(k, dim=-1).values.mean(dim=-1)

    def anomaly_map(self, logits: torch.Tensor) -> torch.Tensor:
        """Smoothed pixel anomaly map (B, H, W) from patch logits."""
        grid = int(math.isqrt(logits.shape[-1]))
        maps = logits.reshape(-1, 1, grid, grid).float()
        maps = F.interpolate(
            maps, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return gaussian_blur(maps.squeeze(1), self.smoothing_kernel)

    def compile_backbone(self, backend: str = "inductor") -> list[int]:
        """torch.compile every needed block that is not regularised; return their numbers.

        Regularised blocks stay eager: compiled code would not run the Python hook that
        captures their qkv output for the attention regulariser.
        """
        extractor = self.feature_extractor
        compiled = []
        for index in range(extractor.depth):
            if index + 1 not in extractor.reg_layers:
                extractor.pretrained_model.blocks[index].compile(backend=backend)
                compiled.append(index + 1)
        return compiled

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H, W) without attention or gradients.

        ``images`` are floats in [0, 1] (ValueError otherwise: 0..255 pixels would score as
        confidently as real ones, and wrongly).
        """
        if images.numel():
            low, high = float(images.min()), float(images.max())
            if not (low >= -1e-3 and high <= 1.0 + 1e-3):  # also catches NaN
                raise ValueError(f"predict takes images in [0, 1]; these hold values in "
                                 f"[{low:g}, {high:g}]" + ("; divide 0..255 pixels by 255"
                                                          if high > 1.5 else ""))
        logits = self.forward(images, with_attention=False).logits
        return self.image_score(logits), self.anomaly_map(logits)
