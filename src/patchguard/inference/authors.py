"""The original authors' per-class checkpoints: import a file into a patchguard checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DEFAULT_BACKBONE
from ..data.layouts import LAYOUTS
from ..models.original import (
    convert_original_state_dict,
    load_original_state_dict,
    names_from_filename,
)
from ..utils.checkpoint import save_checkpoint


def import_original_checkpoint(
    original: str | Path,
    output: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    image_size: int | None = 224,
    **kwargs: Any,
) -> Path:
    """Convert an original checkpoint file and save it (atomically) as a patchguard checkpoint.

    Dataset and class default to those in the original's file name
    (``patchguard_<dataset>_<class>.pth``) when the dataset layout is known.
    """
    dataset, class_name = names_from_filename(original)
    if dataset in LAYOUTS:
        kwargs.setdefault("dataset", dataset)
        kwargs.setdefault("class_name", class_name)
    payload = convert_original_state_dict(
        load_original_state_dict(original), backbone=backbone, image_size=image_size,
        source=f"original PatchGuard checkpoint {Path(original).name}", **kwargs,
    )
    return save_checkpoint(output, payload)
