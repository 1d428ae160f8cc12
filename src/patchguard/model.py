"""The PatchGuard network: a timm ViT feature extractor and a per-patch transformer discriminator.

The model takes images in [0, 1] and normalises them itself, so that attacks operate in pixel
space. Attention for the regulariser is recomputed from each regularised block's ``qkv``
projection output (captured by a forward hook), so timm's own attention call, fused or not and
whatever its signature, is never replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PatchGuardOutput:
    """Forward result: per-patch logits and the regularised layers' patch attention."""

    logits: torch.Tensor  # (B, N)
    attentions: list[torch.Tensor]  # each (B, heads, N, N), patch-to-patch block


def create_backbone(name: str, image_size: int, **kwargs) -> nn.Module:
    """Create a randomly initialised timm ViT without classifier at the given image size."""
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=0, img_size=image_size, **kwargs
        )
    except RuntimeError as error:  # timm raises RuntimeError for unknown names
        raise ValueError(
            f"unknown backbone {name!r}: use a timm ViT name, e.g. "
            f"'vit_small_patch14_dinov2.lvd142m' (see timm.list_models('vit_*'))"
        ) from error


class FeatureExtractor(nn.Module):
    """Runs a timm ViT up to the last needed block; returns patch features and patch attention."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_layers: Sequence[int],
        reg_layers: Sequence[int],
    ) -> None:
        super().__init__()
        self.pretrained_model = backbone  # name kept so the original's checkpoints map 1:1
        blocks = backbone.blocks
        if len(set(feature_layers)) != len(feature_layers) or not feature_layers:
            raise ValueError(f"feature layers {list(feature_layers)}: give one or more, distinct")
        for layer in [*feature_layers, *reg_layers]:
            if not 1 <= layer <= len(blocks):
                raise ValueError(
                    f"layer {layer} out of range: the backbone has blocks 1..{len(blocks)}"
                )
        self.feature_layers = list(feature_layers)
        self.reg_layers = list(reg_layers)
        self.depth = max([*self.feature_layers, *self.reg_layers])
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        self._captured: dict[int, torch.Tensor] = {}
        for layer in self.reg_layers:
            attn = blocks[layer - 1].attn
            if not isinstance(getattr(attn, "qkv", None), nn.Linear):
                raise ValueError(
                    f"block {layer} of this backbone has no fused qkv projection; "
                    "attention regularisation supports timm ViT attention modules"
                )
            attn.qkv.register_forward_hook(self._make_hook(layer))

    @property
    def patch_size(self) -> int:
        """Side of one patch in pixels."""
        size = self.pretrained_model.patch_embed.patch_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return int(self.pretrained_model.patch_embed.grid_size[0])

    @property
    def embed_dim(self) -> int:
        """Width of one feature layer."""
        return int(self.pretrained_model.embed_dim)

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if self._capturing:
                self._captured[layer] = output

        return hook

    _capturing: bool = False

    def _patch_attention(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        attn = self.pretrained_model.blocks[layer - 1].attn
        batch, tokens, _ = qkv.shape
        heads = attn.num_heads
        qkv = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q = attn.q_norm(q) if hasattr(attn, "q_norm") else q
        k = attn.k_norm(k) if hasattr(attn, "k_norm") else k
        scale = getattr(attn, "scale", q.shape[-1] ** -0.5)
        # Float32 even under bf16 autocast: probabilities near 1/N lose the precision the KL term
        # needs in bf16 (autocast would otherwise run this matmul in bf16 despite .float()).
        with torch.autocast(q.device.type, enabled=False):
            probs = (q.float() @ k.float().transpose(-2, -1) * scale).softmax(dim=-1)
        # The full softmax over all tokens, restricted to patch rows and columns (the paper's
        # definition). Every prefix token (class and registers) is dropped, not just the first.
        start = self.num_prefix_tokens
        return probs[:, :, start:, start:]

    def forward(self, x: torch.Tensor, with_attention: bool = True) -> tuple[torch.Tensor, list]:
        """Return features (B, N, D * len(feature_layers)) and the patch attentions."""
        vit = self.pretrained_model
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        features: dict[int, torch.Tensor] = {}
        self._captured = {}
        self._capturing = with_attention
        try:
            for index in range(self.depth):
                x = vit.blocks[index](x)
                if index + 1 in self.feature_layers:
                    features[index + 1] = vit.norm(x)[:, self.num_prefix_tokens :]
        finally:
            self._capturing = False
        attentions = []
        if with_attention:
            missing = [layer for layer in self.reg_layers if layer not in self._captured]
            if missing:
                raise ValueError(
                    f"no attention captured for block(s) {missing}: this backbone's attention "
                    "does not call its qkv projection; use a timm ViT"
                )
            attentions = [self._patch_attention(layer, self._captured[layer])
                          for layer in self.reg_layers]
        self._captured = {}
        return torch.cat([features[layer] for layer in self.feature_layers], dim=-1), attentions


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
        attended, _ = self.attention(x, x, x, need_weights=False)
        x = self.norm(x + self.dropout(attended))
        return x + self.mlp_dropout(self.mlp(x))


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
        backbone: str | nn.Module = "vit_small_patch14_dinov2.lvd142m",
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
        grid = self.feature_extractor.grid_size
        if grid * self.feature_extractor.patch_size != image_size:
            raise ValueError(
                f"image size {image_size} is not a multiple of the backbone's patch size "
                f"{self.feature_extractor.patch_size}; use e.g. "
                f"{grid * self.feature_extractor.patch_size}"
            )
        dim = self.feature_extractor.embed_dim * len(feature_layers)
        self.discriminator = Discriminator(
            grid * grid, dim, dsc_layers, dsc_heads, dsc_hidden, dsc_dropout
        )
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "smoothing_kernel", gaussian_kernel1d(map_sigma, map_radius), persistent=False
        )

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
        x = (images - self.mean) / self.std
        features, attentions = self.feature_extractor(x, with_attention=with_attention)
        return PatchGuardOutput(self.discriminator(features), attentions)

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
        """Image scores (B,) and anomaly maps (B, H, W) without attention or gradients."""
        logits = self.forward(images, with_attention=False).logits
        return self.image_score(logits), self.anomaly_map(logits)
