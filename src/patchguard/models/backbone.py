"""The backbone side of PatchGuard: a timm ViT run to the last needed block, its patch features
and the regularised blocks' patch attention.

Attention for the regulariser is recomputed from each regularised block's ``qkv`` projection
output (captured by a forward hook), so timm's own attention call, fused or not and whatever its
signature, is never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from ..utils.checks import InputError, integer_list

# Input normalisation of every ImageNet-pretrained backbone (docs/method.md, section 1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        depth = f"the backbone has {len(blocks)} blocks, numbered from 1"
        feature_layers = integer_list("feature_layers (--feature-layers)", list(feature_layers),
                                      1, len(blocks), fix=depth)
        reg_layers = integer_list("reg_layers (--reg-layers)", list(reg_layers), 1,
                                  len(blocks), nonempty=False, fix=depth)
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

    def check_image_size(self, image_size: int) -> None:
        """InputError unless ``image_size`` is a positive multiple of the patch size that gives
        the backbone's patch grid."""
        grid, patch = self.grid_size, self.patch_size
        if grid * patch != image_size or image_size < patch:
            raise InputError(
                "image_size (--image-size)", image_size,
                f"must be a positive multiple of the backbone's patch size {patch}",
                f"use e.g. {max(patch, round(image_size / patch) * patch)}")

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
