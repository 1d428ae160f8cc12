"""Which epsilon is the headline for which image size, as the robust anomaly-detection papers
report it (2/255 for MVTec-sized images, 8/255 for low resolution); both are always shown."""

from __future__ import annotations

# From this side up an image counts as high resolution (MVTec AD is evaluated at 224 px).
HIGH_RESOLUTION_PX = 224
HIGH_RESOLUTION_EPSILON = 2.0
LOW_RESOLUTION_EPSILON = 8.0
EPSILON_RULE = (f"{HIGH_RESOLUTION_EPSILON:g}/255 for {HIGH_RESOLUTION_PX} px and up, "
                f"{LOW_RESOLUTION_EPSILON:g}/255 for lower resolution")


def headline_epsilon(image_size: int) -> float:
    """The headline epsilon (1/255 units) for square images of side ``image_size`` pixels."""
    return HIGH_RESOLUTION_EPSILON if image_size >= HIGH_RESOLUTION_PX else LOW_RESOLUTION_EPSILON
