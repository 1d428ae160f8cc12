"""What a model's raw outputs mean to a user: its thresholds, the decision, defect masks and the
heatmap colours, in one component that travels with the model (a checkpoint's ``thresholds``).

``predict``, the HTTP server, the HTML report, ``visualize`` and ``export`` all post-process
through :class:`PostProcessor`, so that a score is called anomalous, and a map is coloured, the
same way everywhere. Heat maps have two colour scales, both shared by every image they show:

* with no ``value_range``: a sigmoid centred on the pixel threshold (0 without one), so the
  decision boundary sits mid-scale (``predict``, the server); per-image min-max scaling would
  paint noise red, and the raw sigmoid left short-trained models uniformly blue;
* with a ``value_range`` (:func:`value_range` of the clean maps): linear over that range, so
  clean and attacked maps of one report compare (the report, ``visualize``).

cv2 is imported inside the drawing functions: importing the models costs nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

HEAT_SLOPE = 2.0  # of the sigmoid around the pixel threshold, per unit of map value
RANGE_PERCENTILES = (1.0, 99.9)  # of the clean maps: a shared range robust to a few outliers
OVERLAY_ALPHA = 0.5
OUTLINE_COLOUR = (0, 255, 0)  # ground-truth outlines, green


@dataclass(frozen=True)
class PostProcessor:
    """A model's image and pixel thresholds, and what follows from them."""

    image_threshold: float | None = None
    pixel_threshold: float | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any] | None) -> PostProcessor:
        """The thresholds a checkpoint carries (``thresholds``: ``image``, ``pixel``), if any."""
        thresholds = (checkpoint or {}).get("thresholds") or {}
        return cls(_number(thresholds.get("image")), _number(thresholds.get("pixel")))

    def overridden(self, image_threshold: float | None = None,
                   pixel_threshold: float | None = None) -> PostProcessor:
        """The same with the thresholds given here (a flag, a query parameter) taking over."""
        return replace(
            self,
            image_threshold=self.image_threshold if image_threshold is None
            else float(image_threshold),
            pixel_threshold=self.pixel_threshold if pixel_threshold is None
            else float(pixel_threshold))

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """Anomalous (True) where score >= the image threshold; None without one (no guess)."""
        if self.image_threshold is None:
            return None
        return np.asarray(scores).astype(np.float64) >= self.image_threshold

    def label(self, score: float) -> str | None:
        """``"anomalous"`` or ``"normal"`` for one score; None without an image threshold."""
        decided = self.decide(np.asarray([score]))
        return None if decided is None else ("anomalous" if decided[0] else "normal")

    def masks(self, maps: np.ndarray) -> np.ndarray:
        """Binary defect masks: map >= the pixel threshold (ValueError without one)."""
        if self.pixel_threshold is None:
            raise ValueError("no pixel threshold: calibrate the checkpoint ('patchguard "
                             "calibrate') or pass a pixel threshold (--pixel-threshold)")
        return np.asarray(maps) >= self.pixel_threshold

    def heat(self, maps: np.ndarray, value_range: tuple[float, float] | None = None
             ) -> np.ndarray:
        """Maps as [0, 1] colour values (float32) on one of the two shared scales above."""
        maps = np.asarray(maps)
        if value_range is not None:
            low, high = value_range
            return np.clip((maps.astype(np.float32) - low) / max(high - low, 1e-8), 0.0, 1.0)
        centre = 0.0 if self.pixel_threshold is None else self.pixel_threshold
        heat = 1.0 / (1.0 + np.exp(-HEAT_SLOPE * (maps.astype(np.float64) - centre)))
        return heat.astype(np.float32)

    def heatmap(self, image: np.ndarray, anomaly_map: np.ndarray,
                mask: np.ndarray | None = None,
                value_range: tuple[float, float] | None = None) -> np.ndarray:
        """One image's heatmap: its coloured map over it (uint8 RGB), the mask outlined."""
        return overlay(image, self.heat(anomaly_map, value_range), mask)

    def to_dict(self) -> dict[str, Any]:
        """The thresholds and colour scale as plain data (written beside an export)."""
        return {"image_threshold": self.image_threshold,
                "pixel_threshold": self.pixel_threshold,
                "decision": "anomalous when score >= image_threshold",
                "heat": f"sigmoid({HEAT_SLOPE:g} * (map - pixel_threshold, or 0 without one))"}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def value_range(maps: np.ndarray) -> tuple[float, float]:
    """The colour range shared by a report's maps: percentiles of the (clean) maps given."""
    low, high = np.percentile(np.asarray(maps, dtype=np.float32), RANGE_PERCENTILES)
    return float(low), float(high)


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend [0, 1] heat (jet colours) over a uint8 RGB image; outline the mask in green."""
    import cv2

    colours = cv2.applyColorMap((np.asarray(heat) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    blended = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    blended = blended.clip(0, 255).astype(np.uint8)
    return draw_outline(blended, mask) if mask is not None else blended


def draw_outline(image: np.ndarray, mask: np.ndarray,
                 colour: tuple[int, int, int] = OUTLINE_COLOUR) -> np.ndarray:
    """Draw the contour of a binary mask on a copy of the image."""
    import cv2

    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    thickness = max(1, image.shape[0] // 160)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out
