"""Foreground-aware pseudo anomalies: cut a patch, augment it, rotate it and paste it elsewhere.

Everything here is numpy / OpenCV / Pillow only (no torch), deterministic given the
``np.random.Generator`` that is passed in, and free of module-level mutable state, so that
instances can be pickled into DataLoader workers.
"""

from .augmentations import apply_augmentation, augment_patch, perlin_noise, sample_augmentations
from .generator import PseudoAnomalyGenerator, find_patch_locations
from .severity import (
    AUGMENTATION_POOLS,
    LOWER_BOUNDS_224,
    SEVERITY_LEVELS,
    SEVERITY_PARAMS,
    SEVERITY_PROBS,
    min_patch_size,
    sample_severity,
)

__all__ = [
    "AUGMENTATION_POOLS",
    "LOWER_BOUNDS_224",
    "SEVERITY_LEVELS",
    "SEVERITY_PARAMS",
    "SEVERITY_PROBS",
    "PseudoAnomalyGenerator",
    "apply_augmentation",
    "augment_patch",
    "find_patch_locations",
    "min_patch_size",
    "perlin_noise",
    "sample_augmentations",
    "sample_severity",
]
