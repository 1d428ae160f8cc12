"""Automatic foreground masks for classes without published ones (DINO PCA, Otsu, full, auto).

``dino``: the first principal component of a pretrained ViT's patch features over all training
images of a class separates object from background; its sign is chosen so that the foreground
covers fewer border patches, it is thresholded with Otsu, upsampled bilinearly to each image and
cleaned with morphology, then sharpened to pixel edges with GrabCut seeded by it.
``threshold``: Otsu on a blurred grayscale image with the border taken as background.
``full``: all ones (textures). ``auto``: ``dino`` (``threshold`` without pretrained weights),
replaced by ``full`` when the masks look like a texture's (nearly everything covered, unstable
coverage across images, or the mask touching the image border as much as its interior).
"""

from .dino import auto_masks, dino_masks, load_pretrained_backbone, patch_features, pca_masks
from .generate import GENERATED_MARKER, METHODS, generate_foreground_masks, generated_info
from .masks import (
    choose_full,
    clean_mask,
    full_masks,
    mask_iou,
    mask_statistics,
    otsu_threshold,
    refine_mask,
    threshold_masks,
)

__all__ = [
    "GENERATED_MARKER",
    "METHODS",
    "auto_masks",
    "choose_full",
    "clean_mask",
    "dino_masks",
    "full_masks",
    "generate_foreground_masks",
    "generated_info",
    "load_pretrained_backbone",
    "mask_iou",
    "mask_statistics",
    "otsu_threshold",
    "patch_features",
    "pca_masks",
    "refine_mask",
    "threshold_masks",
]
