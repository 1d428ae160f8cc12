"""patchguard: adversarially robust anomaly detection and localization (PatchGuard, CVPR 2025)."""

__version__ = "0.1.0"

from .api import evaluate_checkpoint, train  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .model import PatchGuard  # noqa: E402
from .training import load_model  # noqa: E402

__all__ = [
    "PatchGuard",
    "TrainConfig",
    "__version__",
    "evaluate",
    "evaluate_checkpoint",
    "load_model",
    "train",
]
