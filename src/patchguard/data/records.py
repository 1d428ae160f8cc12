"""What a layout reads: one record per image on disk, and the error for a data set it refuses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names the files and the fix."""


@dataclass(frozen=True)
class SampleRecord:
    """One image on disk with its label and optional masks."""

    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"
    mask_path: Path | None = None
    foreground_path: Path | None = None
