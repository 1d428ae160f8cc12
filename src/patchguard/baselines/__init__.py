"""Other anomaly detectors beside PatchGuard, attacked the same way: anomalib's baselines.

``train_baseline("patchcore", class_dir)`` trains with anomalib's own code and returns a
differentiable detector ``images in [0, 1] (B, 3, H, W) -> (scores (B,), maps (B, H, W))``.
anomalib is an optional extra (``pip install 'patchguard[anomalib]'``), imported only when a
baseline is built; importing this package does not need it, nor torch: the names below are
imported when first used, and the registry :data:`.registry.BASELINES` lists the baselines
without importing them (``patchguard --help``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("ANOMALIB_HINT", "AnomalibDetector", "Baseline", "BaselineSettings",
                     "get_baseline", "require_anomalib"), ".anomalib"),
    "BASELINES": ".registry",
    **dict.fromkeys(("load_baseline", "save_baseline", "train_baseline"), ".fit"),
    **dict.fromkeys(("BaselineUnderTest", "baseline_checkpoint", "default_model_size",
                     "prepare_baseline"), ".runs"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'patchguard.baselines' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
