"""patchguard: adversarially robust anomaly detection and localization (PatchGuard, CVPR 2025).

Public names are imported lazily, so ``import patchguard.demo.dataset`` or ``patchguard --help``
does not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_EXPORTS = {
    "PatchGuard": "patchguard.models.patchguard",
    "TrainConfig": "patchguard.config",
    "build_config": "patchguard.config",
    "train": "patchguard.api",
    "evaluate_checkpoint": "patchguard.api",
    "robustify": "patchguard.api",
    "evaluate": "patchguard.evaluation.evaluator",
    "evaluate_detector": "patchguard.api",
    "load_model": "patchguard.models.factory",
    "load": "patchguard.inference.detector",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'patchguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
