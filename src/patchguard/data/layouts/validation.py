"""Validation of a class's records: every problem found once, reported with the same words by
training, testing and ``patchguard data info``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..images import image_dimensions, mask_problem, read_raw_mask, warn_size
from ..records import DatasetError, SampleRecord
from .classes import resolve_class_dir
from .registry import get_layout

_MAX_LISTED = 10


def _examine(records: Sequence[SampleRecord], split: str, where: Path, decode: bool
             ) -> tuple[list[str], Counter[str]]:
    problems: list[str] = []
    sizes: Counter[str] = Counter()
    if not records:
        what = "training" if split == "train" else "test"
        problems.append(f"no {what} images found for the class in {where}")
    has_masks = any(r.mask_path is not None for r in records)
    for record in records:
        try:
            width, height = image_dimensions(record.path, decode)
        except DatasetError as error:
            problems.append(str(error))
            continue
        sizes[f"{width}x{height}"] += 1
        warn_size(str(record.path), width, height)
        if record.label and record.mask_path is None and has_masks:
            problems.append(f"anomalous image {record.path} has no mask")
        extras = (("mask", record.mask_path), ("foreground mask", record.foreground_path))
        for kind, extra in extras:
            if extra is None:
                continue
            try:
                if decode and kind == "mask":
                    # Decoded anyway: also judge its values (empty, soft, noisy).
                    values = read_raw_mask(extra)
                    extra_size = (values.shape[1], values.shape[0])
                    # One problem per file: a mask of the wrong size is reported as that.
                    problem = (mask_problem(values, extra)
                               if record.label and extra_size == (width, height) else None)
                    if problem:
                        problems.append(problem)
                else:
                    extra_size = image_dimensions(extra, decode)
            except DatasetError as error:
                problems.append(f"{kind}: {error}")
                continue
            if kind == "mask" and extra_size != (width, height):
                problems.append(
                    f"mask {extra} is {extra_size[0]}x{extra_size[1]} but its image "
                    f"{record.path} is {width}x{height}"
                )
    return problems, sizes


def find_problems(records: Sequence[SampleRecord], split: str, where: str | Path = "",
                  decode: bool = False) -> list[str]:
    """Problems of one split's records (empty split, missing or mis-sized masks, bad files)."""
    return _examine(records, split, Path(where), decode)[0]


def problems_message(dataset: str, root: str | Path, class_name: str,
                     problems: Sequence[str]) -> str:
    """The one message used by training, testing and ``data info`` for a broken layout."""
    listed = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
    more = (f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED
            else "")
    return (
        f"{dataset} class {class_name!r} in {root} has {len(problems)} problem(s):\n"
        f"{listed}{more}\n"
        f"Fix or remove these files (a class without any masks is evaluated without pixel "
        f"metrics); `patchguard data info --dataset {dataset} --dataset-dir {root} "
        f"--class-name {class_name}` lists them all."
    )


def inspect_layout(dataset: str, root: str | Path, class_name: str,
                   decode: bool = True) -> dict[str, Any]:
    """Counts, defect types, masks, image sizes and problems of one class of a layout."""
    reader = get_layout(dataset)
    report: dict[str, Any] = {
        "dataset": dataset, "root": str(root), "class_name": class_name, "class_dir": None,
        "train": 0, "test": 0, "test_normal": 0, "test_anomalous": 0, "defect_types": {},
        "anomalous_with_mask": 0, "anomalous_without_mask": 0, "foreground_masks": 0,
        "image_sizes": {}, "problems": [],
    }
    try:
        class_dir = resolve_class_dir(root, class_name)
        report["class_dir"] = str(class_dir)
        splits = {split: reader(root, class_name, split) for split in ("train", "test")}
    except DatasetError as error:
        report["problems"].append(str(error))
        return report
    sizes: Counter[str] = Counter()
    for split, records in splits.items():
        problems, seen = _examine(records, split, class_dir, decode)
        report["problems"] += problems
        sizes.update(seen)
    train, test = splits["train"], splits["test"]
    anomalous = [r for r in test if r.label]
    report.update(
        train=len(train), test=len(test), test_normal=len(test) - len(anomalous),
        test_anomalous=len(anomalous),
        defect_types=dict(sorted(Counter(r.defect_type for r in anomalous).items())),
        anomalous_with_mask=sum(r.mask_path is not None for r in anomalous),
        anomalous_without_mask=sum(r.mask_path is None for r in anomalous),
        foreground_masks=sum(r.foreground_path is not None for r in train),
        image_sizes=dict(sizes.most_common()),
    )
    return report
