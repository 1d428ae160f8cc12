"""Foreground masks from a pretrained ViT: the first principal component of its patch features over
a class separates object from background (``dino``), and ``auto`` picks it or full masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from ...config import DEFAULT_BACKBONE
from ...models.backbone import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, create_backbone
from ...models.backbone_weights import BackboneWeightsError, load_backbone_weights
from ...utils.device import resolve_device
from ..images import resize_image
from .masks import (
    as_rgb,
    border_mask,
    choose_full,
    clean_mask,
    full_masks,
    otsu_threshold,
    refine_mask,
    threshold_masks,
)

logger = logging.getLogger(__name__)


def pca_masks(
    features: torch.Tensor | np.ndarray,
    sizes: Sequence[tuple[int, int]],
    threshold: str = "otsu",
) -> list[np.ndarray]:
    """Masks from patch features (n, gh, gw, D): first principal component, signed, thresholded.

    The component is computed over all patches of all images; its sign makes the foreground the
    side covering fewer border patches; the threshold is Otsu's (or 0); the component map is
    upsampled bilinearly to each (height, width) in ``sizes`` before thresholding, then cleaned.
    """
    feats = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if feats.ndim != 4:
        raise ValueError(f"features must be (n, grid_h, grid_w, dim), not {tuple(feats.shape)}")
    n, grid_h, grid_w, dim = feats.shape
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} sizes for {n} feature maps")
    flat = feats.reshape(-1, dim)
    flat = flat - flat.mean(dim=0, keepdim=True)
    # First eigenvector of the D x D covariance: the same direction as the first right singular
    # vector of the centred features, cheap for any number of patches.
    _, vectors = torch.linalg.eigh(flat.T @ flat)
    component = (flat @ vectors[:, -1]).reshape(n, grid_h, grid_w).numpy()
    if threshold == "otsu":
        cut = otsu_threshold(component)
    elif threshold == "zero":
        cut = 0.0
    else:
        raise ValueError(f"threshold must be 'otsu' or 'zero', not {threshold!r}")
    border = border_mask((grid_h, grid_w))
    positive_border = np.count_nonzero(component[:, border] > cut)
    if positive_border > component[:, border].size - positive_border:
        component, cut = -component, -cut
    masks = []
    for values, (height, width) in zip(component, sizes):
        upsampled = cv2.resize(
            values.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR
        )
        masks.append(clean_mask(upsampled > cut))
    return masks


def load_pretrained_backbone(backbone: str = DEFAULT_BACKBONE, image_size: int = 224) -> nn.Module:
    """A timm ViT with pretrained weights (raises BackboneWeightsError when none can be found)."""
    model = create_backbone(backbone, image_size)
    source = load_backbone_weights(model, backbone)
    logger.info("foreground masks: %s weights from %s", backbone, source)
    return model.eval()


@torch.inference_mode()
def patch_features(
    images: Sequence[np.ndarray],
    model: nn.Module,
    layer: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 16,
) -> torch.Tensor:
    """Patch-token features (n, grid_h, grid_w, D) of a ViT block ``layer`` (default: last)."""
    depth = len(model.blocks)
    extractor = FeatureExtractor(model, [depth if layer is None else int(layer)], [])
    target = resolve_device(device)
    extractor.to(target).eval()
    img_size = model.patch_embed.img_size
    side = int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size)
    grid_h, grid_w = (int(v) for v in model.patch_embed.grid_size)
    mean = torch.tensor(IMAGENET_MEAN, device=target).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=target).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.stack(
            [resize_image(as_rgb(images[i]), side)
             for i in range(start, min(start + batch_size, len(images)))]
        )
        x = torch.from_numpy(batch).to(target).permute(0, 3, 1, 2).float().div_(255.0)
        features, _ = extractor((x - mean) / std, with_attention=False)
        chunks.append(features.float().cpu().reshape(len(batch), grid_h, grid_w, -1))
    return torch.cat(chunks)


def dino_masks(
    images: Sequence[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = 224,
    layer: int | None = None,
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    threshold: str = "otsu",
    refine: bool = True,
) -> list[np.ndarray]:
    """Foreground masks from the first principal component of a ViT's patch features.

    With ``refine`` each patch-resolution mask is sharpened to pixel edges by :func:`refine_mask`.
    """
    if not len(images):
        return []
    if model is None:
        model = load_pretrained_backbone(backbone, image_size)
    features = patch_features(images, model, layer=layer, device=device)
    sizes = [tuple(np.asarray(images[i]).shape[:2]) for i in range(len(images))]
    masks = pca_masks(features, sizes, threshold=threshold)
    if refine:
        masks = [refine_mask(images[i], mask) for i, mask in enumerate(masks)]
    return masks


def auto_masks(
    images: Sequence[np.ndarray],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = 224,
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    base: str | None = None,
) -> tuple[str, list[np.ndarray]]:
    """Per-class choice: dino (threshold without weights) or full for textures; (method, masks)."""
    if base is None:
        if model is None:
            try:
                model = load_pretrained_backbone(backbone, image_size)
            except (BackboneWeightsError, ValueError) as error:
                logger.info(
                    "foreground masks: no pretrained %s weights (%s); using the threshold method",
                    backbone, str(error).splitlines()[0][:160],
                )
        base = "threshold" if model is None else "dino"
    if base == "dino":
        masks = dino_masks(images, backbone, image_size, device=device, model=model)
    elif base == "threshold":
        masks = threshold_masks(images)
    else:
        raise ValueError(f"base must be 'dino' or 'threshold', not {base!r}")
    texture, reason = choose_full(masks)
    logger.info("foreground masks (auto): %s -> %s", reason, "full" if texture else base)
    if texture:
        return "full", full_masks(images)
    return base, masks
