"""A headless matplotlib and atomic figure saving, shared by every plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .files import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib.pyplot, on the file-only Agg backend (works on headless servers) unless the
    caller already chose one."""
    import os
    import sys

    import matplotlib

    # A notebook kernel sets MPLBACKEND to its inline backend, and a user who imported pyplot
    # has a backend: switching either to Agg would stop their figures from showing.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Render a figure to PNG and write it atomically, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write_bytes(path, lambda handle: handle.write(buffer.getvalue()))
