"""Data set layouts of every data set of the paper, a generic folder layout, and validation.

Each layout is a function ``(root, class_name, split) -> list[SampleRecord]`` registered in
:data:`patchguard.data.LAYOUTS`. Readers here never rewrite whole paths (a parent folder named
``test`` cannot confuse mask lookup) and never raise for a missing mask: problems are collected by
:func:`find_problems`, which :func:`patchguard.data.load_records` and :func:`inspect_layout` share,
so training, testing and ``patchguard data info`` report a broken layout with the same words.

Layouts, paths relative to ``<root>/<class_name>`` (for the single-class data sets ``root`` may
also be the class folder itself):

- ``mvtec``, ``mpdd``, ``dtd`` (DTD-Synthetic), ``wfdd``, ``headct``: ``train/good/``,
  ``train/foreground_mask/`` (optional, matched by file stem), ``test/good/``,
  ``test/<defect>/``, masks ``ground_truth/<defect>/<stem>_mask.<ext>`` (or ``<stem>.<ext>``).
- ``btad``: ``train/ok/``, ``train/foreground_mask/``, ``test/ok/``, ``test/ko/``, masks
  ``ground_truth/ko/<stem>.png`` (images may be ``.bmp``; masks are matched by stem).
- ``visa``: ``Data/Images/Normal/``, ``Data/Images/Anomaly/``, masks
  ``Data/Masks/Anomaly/<stem>.png``, foreground masks ``Data/Images/foreground_mask/``; the split
  is the official ``<root>/split_csv/1cls.csv``. ``visa-patchguard`` uses the original
  PatchGuard split instead: normal images with a foreground mask are train, the rest test. Without
  the CSV, ``visa`` falls back to the PatchGuard split (with a warning) when foreground masks exist.
- ``brats2021``: ``train/normal/``, ``train/foreground_mask/``, ``test/<type>/`` (``normal`` is
  the normal type), masks ``ground_truth/<type>/<name>`` or ``ground_truth/<name>`` where
  ``<name>`` is the image's file name with ``flair`` replaced by ``seg`` (in the name only).
- ``folder``, a user's own data, ``<root>/<class_name>/``:

  - ``train/`` normal training images (or ``train/good/``, or ``good/``),
  - ``test/good/`` optional normal test images (``normal`` and ``ok`` also count as normal),
  - ``test/<anything else>/`` anomalous test images, the folder name is the defect type,
  - ``masks/`` optional ground-truth masks matched by file stem, any image extension, with or
    without a ``_mask`` suffix (``masks/<defect>/`` is searched first, for stems that repeat
    across defect folders),
  - ``foreground/`` optional foreground masks matched by file stem (same rules).

  When some anomalous images have masks, all must have one; with no masks at all the class is
  evaluated without pixel metrics.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .data import LAYOUTS, DatasetError, SampleRecord, list_images, mvtec_records

logger = logging.getLogger(__name__)

NORMAL_NAMES = ("good", "normal", "ok")

KNOWN_CLASSES: dict[str, list[str]] = {
    "mvtec": [
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    ],
    "visa": [
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
        "pcb2", "pcb3", "pcb4", "pipe_fryum",
    ],
    "mpdd": [
        "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes",
    ],
    "btad": ["01", "02", "03"],
    "dtd": [
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
    ],
    "wfdd": ["grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth"],
    "brats2021": ["brats2021"],
    "headct": ["headct"],
    "folder": [],
}
KNOWN_CLASSES["visa-patchguard"] = KNOWN_CLASSES["visa"]

_MAX_LISTED = 10


def known_classes(dataset: str) -> list[str]:
    """The class names of a known data set (empty for ``folder``)."""
    if dataset not in KNOWN_CLASSES:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {sorted(KNOWN_CLASSES)}")
    return list(KNOWN_CLASSES[dataset])


_warned: set[tuple[str, str]] = set()


def warn_unknown_class(dataset: str, class_name: str) -> None:
    """Log a warning (once) when class_name is not one of the data set's known classes."""
    known = KNOWN_CLASSES.get(dataset)
    if known and class_name not in known and (dataset, class_name) not in _warned:
        _warned.add((dataset, class_name))
        logger.warning(
            "class %r is not one of the %s classes (%s); reading it anyway",
            class_name, dataset, ", ".join(known),
        )


# ---------------------------------------------------------------------------- helpers


def resolve_class_dir(root: str | Path, class_name: str) -> Path:
    """``<root>/<class_name>``, or root itself when it already is a class folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data set directory {root} does not exist; check --dataset-dir")
    if class_name and (root / class_name).is_dir():
        return root / class_name
    if _looks_like_class(root):
        return root
    found = discover_classes(root)
    raise DatasetError(
        f"class folder {root / class_name} does not exist; classes found in {root}: "
        f"{', '.join(found) or 'none'}"
    )


def _looks_like_class(folder: Path) -> bool:
    return any((folder / sub).is_dir() for sub in ("train", "test", "Data", "good"))


def discover_classes(root: str | Path) -> list[str]:
    """Class folders under root (folders with train/, test/, Data/ or good/), sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and _looks_like_class(p)
    )
    if not found and _looks_like_class(root):
        return [root.name]
    return found


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class _StemIndex:
    """Find a file by stem in a list of folders (any image extension, .png preferred)."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, Path]] = {}

    def _index(self, folder: Path) -> dict[str, Path]:
        if folder not in self._cache:
            table: dict[str, Path] = {}
            for path in list_images(folder):
                if path.stem not in table or path.suffix.lower() == ".png":
                    table[path.stem] = path
            self._cache[folder] = table
        return self._cache[folder]

    def find(self, folders: Iterable[Path], stems: Sequence[str]) -> Path | None:
        for folder in folders:
            table = self._index(folder)
            for stem in stems:
                if stem in table:
                    return table[stem]
        return None


def _mask_stems(path: Path, suffixes: Sequence[str], flair_to_seg: bool) -> list[str]:
    bases = [path.stem]
    if flair_to_seg and "flair" in path.stem:
        bases.insert(0, path.stem.replace("flair", "seg"))
    return [base + suffix for base in bases for suffix in suffixes]


def _fg_stems(path: Path) -> tuple[str, str]:
    return path.stem, path.stem + "_mask"


@dataclass(frozen=True)
class _Spec:
    """Where one folder-per-type layout keeps its files (paths relative to the class folder)."""

    train: tuple[str, ...] = ("train/good",)
    foreground: tuple[str, ...] = ("train/foreground_mask",)
    masks: tuple[str, ...] = ("ground_truth/{type}",)
    suffixes: tuple[str, ...] = ("_mask", "")
    flair_to_seg: bool = False


def _typed_records(spec: _Spec, root: str | Path, class_name: str, split: str
                   ) -> list[SampleRecord]:
    """Records of a layout with one test folder per type (MVTec and its relatives)."""
    _check_split(split)
    class_dir = resolve_class_dir(root, class_name)
    index = _StemIndex()
    if split == "train":
        images: list[Path] = []
        for sub in spec.train:
            images = list_images(class_dir / sub)
            if images:
                break
        fg_dirs = [class_dir / sub for sub in spec.foreground]
        return [
            SampleRecord(p, 0, "good", foreground_path=index.find(fg_dirs, _fg_stems(p)))
            for p in images
        ]
    records = []
    for folder in _subdirs(class_dir / "test"):
        if folder.name.lower() in NORMAL_NAMES:
            records += [SampleRecord(p, 0, "good") for p in list_images(folder)]
            continue
        mask_dirs = [class_dir / template.format(type=folder.name) for template in spec.masks]
        for path in list_images(folder):
            stems = _mask_stems(path, spec.suffixes, spec.flair_to_seg)
            mask = index.find(mask_dirs, stems)
            records.append(SampleRecord(path, 1, folder.name, mask_path=mask))
    return records


def _spec_layout(spec: _Spec, doc: str) -> Callable[[str | Path, str, str], list[SampleRecord]]:
    layout = partial(_typed_records, spec)
    layout.__doc__ = doc
    return layout  # type: ignore[return-value]


MVTEC_SPEC = _Spec()
BTAD_SPEC = _Spec(train=("train/ok", "train/good"))
BRATS_SPEC = _Spec(
    train=("train/normal", "train/good"), masks=("ground_truth/{type}", "ground_truth"),
    flair_to_seg=True,
)
FOLDER_SPEC = _Spec(
    train=("train", "train/good", "good"), foreground=("foreground", "train/foreground_mask"),
    masks=("masks/{type}", "masks", "ground_truth/{type}"),
)

mvtec_like_records = _spec_layout(MVTEC_SPEC, "Records of an MVTec-style class (MPDD, DTD, WFDD).")
btad_records = _spec_layout(BTAD_SPEC, "Records of a BTAD class (train/ok, test/ok|ko).")
brats_records = _spec_layout(BRATS_SPEC, "Records of BraTS2021 slices (flair images, seg masks).")
folder_records = _spec_layout(FOLDER_SPEC, "Records of a user's own folders (module docstring).")


# ---------------------------------------------------------------------------- VisA


def _visa_csv(root: Path, class_dir: Path) -> Path | None:
    for base in (root, class_dir.parent, class_dir):
        candidate = base / "split_csv" / "1cls.csv"
        if candidate.is_file():
            return candidate
    return None


def _visa_official(csv_path: Path, class_dir: Path, class_name: str, split: str,
                   index: _StemIndex) -> list[SampleRecord]:
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
            fg = index.find([fg_dir], _fg_stems(path)) if split == "train" else None
            records.append(SampleRecord(path, 0, "good", foreground_path=fg))
            continue
        mask = base / row["mask"] if row.get("mask") else None
        if mask is None or not mask.exists():
            mask = index.find([mask_dir], _fg_stems(path))
        records.append(SampleRecord(path, 1, "anomaly", mask_path=mask))
    return records


def _visa_by_foreground(class_dir: Path, split: str, index: _StemIndex) -> list[SampleRecord]:
    images = class_dir / "Data" / "Images"
    fg_dir = images / "foreground_mask"
    train, test = [], []
    for path in list_images(images / "Normal"):
        fg = index.find([fg_dir], _fg_stems(path))
        if fg is not None:
            train.append(SampleRecord(path, 0, "good", foreground_path=fg))
        else:
            test.append(SampleRecord(path, 0, "good"))
    if split == "train":
        return train
    mask_dir = class_dir / "Data" / "Masks" / "Anomaly"
    for path in list_images(images / "Anomaly"):
        mask = index.find([mask_dir], _fg_stems(path))
        test.append(SampleRecord(path, 1, "anomaly", mask_path=mask))
    return test


def visa_records(root: str | Path, class_name: str, split: str) -> list[SampleRecord]:
    """Records of a VisA class with the official split_csv/1cls.csv split."""
    _check_split(split)
    class_dir = resolve_class_dir(root, class_name)
    index = _StemIndex()
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
    _check_split(split)
    return _visa_by_foreground(resolve_class_dir(root, class_name), split, _StemIndex())


NEW_LAYOUTS: dict[str, Callable[[str | Path, str, str], list[SampleRecord]]] = {
    "visa": visa_records,
    "visa-patchguard": visa_patchguard_records,
    "mpdd": mvtec_like_records,
    "btad": btad_records,
    "dtd": mvtec_like_records,
    "wfdd": mvtec_like_records,
    "brats2021": brats_records,
    "headct": mvtec_like_records,
    "folder": folder_records,
}

# Non-raising readers used for validation where the registered reader raises by itself.
SCANNERS: dict[Callable[..., list[SampleRecord]], Callable[[str | Path, str, str],
                                                            list[SampleRecord]]] = {
    mvtec_records: mvtec_like_records,
}
LAYOUTS.update(NEW_LAYOUTS)


# ---------------------------------------------------------------------------- validation


def _size(path: Path, decode: bool) -> tuple[int, int]:
    """(width, height) of an image file; DatasetError naming it when it cannot be read."""
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return img.size
    except FileNotFoundError as error:
        raise DatasetError(f"file not found: {path}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"unreadable file {path} ({error})") from error


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
            width, height = _size(record.path, decode)
        except DatasetError as error:
            problems.append(str(error))
            continue
        sizes[f"{width}x{height}"] += 1
        if record.label and record.mask_path is None and has_masks:
            problems.append(f"anomalous image {record.path} has no mask")
        extras = (("mask", record.mask_path), ("foreground mask", record.foreground_path))
        for kind, extra in extras:
            if extra is None:
                continue
            try:
                extra_size = _size(extra, decode)
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
    if dataset not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {dataset!r}; available: {sorted(LAYOUTS)}")
    reader = SCANNERS.get(LAYOUTS[dataset], LAYOUTS[dataset])
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
