"""Which epsilon is the headline for which image size, as the robust anomaly-detection papers
report it (2/255 for MVTec-sized images, 8/255 for low resolution); both are always shown.

COBRA, RODEO, PrincipaLS and ZARND quote L-infinity epsilon 2/255 for high-resolution images
(MVTec AD at 224 px) and 8/255 for low-resolution ones (CIFAR-size): the same per-pixel budget
is a far larger attack on 50k pixels than on 3k. The demo's table and ``benchmark``'s mark the
headline column by this rule.
"""

from __future__ import annotations

from collections.abc import Iterable

# From this side up an image counts as high resolution (MVTec AD is evaluated at 224 px).
HIGH_RESOLUTION_PX = 224
HIGH_RESOLUTION_EPSILON = 2.0
LOW_RESOLUTION_EPSILON = 8.0
REPORTED_EPSILONS = (HIGH_RESOLUTION_EPSILON, LOW_RESOLUTION_EPSILON)  # always both
EPSILON_RULE = (f"{HIGH_RESOLUTION_EPSILON:g}/255 for {HIGH_RESOLUTION_PX} px and up, "
                f"{LOW_RESOLUTION_EPSILON:g}/255 for lower resolution")


def headline_epsilon(image_size: int) -> float:
    """The headline epsilon (1/255 units) for square images of side ``image_size`` pixels."""
    return HIGH_RESOLUTION_EPSILON if image_size >= HIGH_RESOLUTION_PX else LOW_RESOLUTION_EPSILON


def headline_of(image_sizes: Iterable[int | None]) -> float | None:
    """The one headline epsilon of results at these image sizes (unknown sizes ignored), or
    None when none is known or the sizes disagree (some high, some low resolution)."""
    found = {headline_epsilon(int(size)) for size in image_sizes if size}
    return found.pop() if len(found) == 1 else None


def headline_note(image_sizes: Iterable[int | None], evaluated: Iterable[float]) -> str:
    """One sentence under a results table: which epsilon is the headline and why, and which of
    the two reported epsilons the run left out."""
    sizes = sorted({int(size) for size in image_sizes if size})
    evaluated = {float(e) for e in evaluated if e > 0}
    headline = headline_of(sizes)
    if not sizes:
        text = f"Headline epsilon: {EPSILON_RULE} (the image size of these rows is not recorded)."
    elif headline is None:
        text = (f"Headline epsilon: {EPSILON_RULE}; these classes were tested at "
                f"{', '.join(map(str, sizes))} px, on both sides of that line, so no column "
                "is marked.")
    else:
        size = "/".join(map(str, sizes))
        text = f"Headline epsilon: {headline:g}/255 ({size}-px test images; {EPSILON_RULE})."
    missing = [e for e in REPORTED_EPSILONS if e not in evaluated]
    if missing and evaluated:
        text += (" Not evaluated: " + ", ".join(f"{e:g}/255" for e in missing)
                 + " (add it to --epsilon-test: results are reported at both).")
    return text
