"""The parameter tables of the pseudo-anomaly generator (docs/method.md, section 5): severity
levels, their parameter ranges and augmentation pools, and the per-class lower bounds of the patch
size.
"""

from __future__ import annotations

import numpy as np

# Lower bound of the pasted patch side, in pixels at 224 px: "*" is the data set's default, the
# other keys are the classes that differ from it (docs/method.md, section 5).
LOWER_BOUNDS_224: dict[str, dict[str, int]] = {
    "mvtec": {"*": 14, "screw": 9},
    "visa": {"*": 14, "capsules": 6, "fryum": 6, "cashew": 10},
    "mpdd": {"*": 14, "bracket_black": 6, "bracket_brown": 6, "bracket_white": 6,
             "connector": 6, "tubes": 6},
    "btad": {"*": 14, "01": 9, "03": 9},
    "dtd": {"*": 14},
    "wfdd": {"*": 9},
    "brats2021": {"*": 14},
    "headct": {"*": 9},
}
_DEFAULT_BOUND_224 = 14

SEVERITY_LEVELS: tuple[str, ...] = ("light", "medium", "heavy")
SEVERITY_PROBS: tuple[float, ...] = (0.2, 0.2, 0.6)

# Ranges are inclusive (lo, hi); integer parameters are drawn with rng.integers(lo, hi + 1).
SEVERITY_PARAMS: dict[str, dict[str, tuple[float, float] | float | int]] = {
    "light": {
        "max_augmentations": 1,
        "jitter_bcs": (0.1, 0.1),
        "jitter_hue": 0.1,
        "elastic_alpha": (10.0, 20.0),
        "torn_lines": (1, 3),
        "perlin_scale": (20.0, 50.0),
        "perlin_threshold": (200, 255),
        "swirl_strength": (0.5, 1.0),
        "erase_area": (0.01, 0.05),
        "erase_count": (1, 2),
        "blur_radius": (0.2, 0.5),
        "jpeg_quality": (30, 50),
    },
    "medium": {
        "max_augmentations": 2,
        "jitter_bcs": (0.4, 0.4),
        "jitter_hue": 0.3,
        "elastic_alpha": (20.0, 40.0),
        "torn_lines": (5, 10),
        "perlin_scale": (10.0, 20.0),
        "perlin_threshold": (150, 200),
        "swirl_strength": (1.0, 1.5),
        "erase_area": (0.05, 0.1),
        "erase_count": (2, 3),
        "blur_radius": (0.8, 1.5),
        "jpeg_quality": (20, 30),
    },
    "heavy": {
        "max_augmentations": 4,
        "jitter_bcs": (0.8, 1.0),
        "jitter_hue": 0.5,
        "elastic_alpha": (40.0, 100.0),
        "torn_lines": (10, 20),
        "perlin_scale": (5.0, 10.0),
        "perlin_threshold": (128, 150),
        "swirl_strength": (1.5, 2.0),
        "erase_area": (0.1, 0.2),
        "erase_count": (3, 5),
        "blur_radius": (2.0, 3.0),
        "jpeg_quality": (1, 20),
    },
}

# The colour jitter is not part of any pool: it is always inserted at a random position.
AUGMENTATION_POOLS: dict[str, tuple[str, ...]] = {
    "light": ("gaussian_blur", "elastic", "swirl"),
    "medium": ("gaussian_blur", "swirl", "jpeg", "elastic"),
    "heavy": (
        "elastic",
        "torn_paper",
        "jpeg",
        "perlin",
        "swirl",
        "random_erasing",
        "gaussian_blur",
    ),
}

def min_patch_size(dataset: str, class_name: str, image_size: int) -> int:
    """Return the class's lower bound of the patch side, scaled from 224 px to ``image_size``."""
    bounds = LOWER_BOUNDS_224.get(dataset.lower())
    if bounds is None:
        bound = _DEFAULT_BOUND_224
    else:
        key = class_name.lower()
        if dataset.lower() == "btad" and key.isdigit():
            # BTAD classes are "01".."03"; accept "1" or "3" as well.
            key = key.zfill(2)
        bound = bounds.get(key, bounds.get("*", _DEFAULT_BOUND_224))
    return max(2, round(bound * image_size / 224))


def sample_severity(rng: np.random.Generator) -> str:
    """Draw a severity level: light / medium / heavy with p = 0.2 / 0.2 / 0.6."""
    return SEVERITY_LEVELS[int(rng.choice(len(SEVERITY_LEVELS), p=SEVERITY_PROBS))]
