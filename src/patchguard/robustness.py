"""Deprecated alias of :mod:`patchguard.api` for :func:`evaluate_detector` (removed in 0.3).

``from patchguard.robustness import evaluate_detector`` still works for one release and warns;
import it from ``patchguard.api`` (or ``patchguard``) instead.
"""

from __future__ import annotations

import warnings

from .adversarial.attackable import DetectorOutput
from .adversarial.standard import STANDARD_MEMBERS, Member
from .api import (
    AttackSettings,
    DetectorEvaluation,
    TensorTestSet,
    evaluate_detector,
)

__all__ = ["AttackSettings", "DetectorEvaluation", "DetectorOutput", "Member",
           "STANDARD_MEMBERS", "TensorTestSet", "evaluate_detector"]

warnings.warn("patchguard.robustness is deprecated and will be removed in 0.3: import "
              "evaluate_detector from patchguard.api (or patchguard) instead",
              DeprecationWarning, stacklevel=2)
