"""VisA: the official split_csv/1cls.csv split, or the original PatchGuard foreground-mask split."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..images import list_images
from ..records import DatasetError, SampleRecord
from .classes import resolve_class_dir
from .folders import StemIndex, check_split, fg_stems

logger = logging.getLogger(__name__)


def _visa_csv(root: Path, class_dir: Path) -> Path | None:
    for base in (root, class_dir.parent, class_dir):
        candidate = base / "split_csv" / "1cls.csv"
        if candidate.is_file():
            return candidate
    return None


def _visa_official(csv_path: Path, class_dir: Path, class_name: str, split: str,
                   index: StemIndex) -> list[SampleRecord]:
    base = csv_path.parent.parent
    mask_dir = class_dir / "Data" / "Masks" / "Anomaly"
    fg_dir = class_dir / "Data" / "Images" / "foreground_mask"
    records = []
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {row.get("object", "") for row in rows}
    if class_name not in names and class_dir.name not in names:
        raise DatasetError(
            f"class {class_name!r} is not in {csv_path}; classes there: {', '.join(sorted(names))}"
        )
    for row in rows:
        if row.get("object") not in (class_name, class_dir.name) or row.get("split") != split:
            continue
        path = base / row["image"]
        if row.get("label", "normal") == "normal":
            fg = index.find([fg_dir], fg_stems(path)) if split == "train" else None
            records.append(SampleRecord(path, 0, "good", foreground_path=fg))
            continue
        mask = base / row["mask"] if row.get("mask") else None
        if mask is None or not mask.exists():
            mask = index.find([mask_dir], fg_stems(path))
        records.append(SampleRecord(path, 1, "anomaly", mask_path=mask))
    return records


def _visa_by_foreground(class_dir: Path, split: str, index: StemIndex) -> list[SampleRecord]:
    images = class_dir / "Data" / "Images"
    fg_dir = images / "foreground_mask"
    train, test = [], []
    for path in list_images(images / "Normal"):
        fg = index.find([fg_dir], fg_stems(path))
        if fg is not None:
            train.append(SampleRecord(path, 0, "good", foreground_path=fg))
        else:
            test.append(SampleRecord(path, 0, "good"))
    if split == "train":
        return train
    mask_dir = class_dir / "Data" / "Masks" / "Anomaly"
    for path in list_images(images / "Anomaly"):
        mask = index.find([mask_dir], fg_stems(path))
        test.append(SampleRecord(path, 1, "anomaly", mask_path=mask))
    return test


def visa_records(root: str | Path, class_name: str, split: str) -> list[SampleRecord]:
    """Records of a VisA class with the official split_csv/1cls.csv split."""
    check_split(split)
    class_dir = resolve_class_dir(root, class_name)
    index = StemIndex()
    csv_path = _visa_csv(Path(root).expanduser(), class_dir)
    if csv_path is not None:
        return _visa_official(csv_path, class_dir, class_name, split, index)
    fg_dir = class_dir / "Data" / "Images" / "foreground_mask"
    if list_images(fg_dir):
        logger.warning("no split_csv/1cls.csv under %s; using the PatchGuard foreground-mask split",
                       root)
        return _visa_by_foreground(class_dir, split, index)
    raise DatasetError(
        f"VisA needs split_csv/1cls.csv in {root} for the official split (or foreground masks in "
        f"{fg_dir} for --dataset visa-patchguard)"
    )


def visa_patchguard_records(root: str | Path, class_name: str, split: str) -> list[SampleRecord]:
    """Records of a VisA class, split as the original: normals with a foreground mask train."""
    check_split(split)
    return _visa_by_foreground(resolve_class_dir(root, class_name), split, StemIndex())
