"""Other anomaly detectors beside PatchGuard, attacked the same way: anomalib's baselines.

``train_baseline("patchcore", class_dir)`` trains with anomalib's own code and returns a
differentiable detector ``images in [0, 1] (B, 3, H, W) -> (scores (B,), maps (B, H, W))``.
anomalib is an optional extra (``pip install 'patchguard[anomalib]'``), imported only when a
baseline is built; importing this package does not need it.
"""

from .anomalib import (
    ANOMALIB_HINT,
    BASELINES,
    AnomalibDetector,
    Baseline,
    BaselineSettings,
    get_baseline,
    require_anomalib,
)
from .fit import load_baseline, save_baseline, train_baseline
from .runs import BaselineUnderTest, baseline_checkpoint, default_model_size, prepare_baseline

__all__ = ["ANOMALIB_HINT", "BASELINES", "AnomalibDetector", "Baseline", "BaselineSettings",
           "BaselineUnderTest", "baseline_checkpoint", "default_model_size", "get_baseline",
           "load_baseline", "prepare_baseline", "require_anomalib", "save_baseline",
           "train_baseline"]
