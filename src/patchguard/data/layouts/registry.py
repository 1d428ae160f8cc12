"""The registry of data set layouts: name -> ``(root, class_name, split) -> list[SampleRecord]``.

Registering another function in :data:`LAYOUTS` is all a new data set format needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...utils.registry import Registry
from ..records import DatasetError, SampleRecord
from .folders import brats_records, btad_records, folder_records, mvtec_like_records
from .visa import visa_patchguard_records, visa_records

Layout = Callable[[str | Path, str, str], list[SampleRecord]]

LAYOUTS: Registry[Layout] = Registry("dataset layout", {
    "mvtec": mvtec_like_records,
    "visa": visa_records,
    "visa-patchguard": visa_patchguard_records,
    "mpdd": mvtec_like_records,
    "btad": btad_records,
    "dtd": mvtec_like_records,
    "wfdd": mvtec_like_records,
    "brats2021": brats_records,
    "headct": mvtec_like_records,
    "folder": folder_records,
    "demo": mvtec_like_records,
})


def get_layout(dataset: str) -> Layout:
    """The reader of a registered layout; DatasetError listing the others for an unknown name."""
    if dataset not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {dataset!r}; available: {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]
