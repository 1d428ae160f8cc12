"""Layouts with one test folder per defect type: MVTec AD and its relatives, BTAD, BraTS2021 and
a user's own folders (see the package docstring for each layout's folders).

Masks are looked up by folder components and file stems, never by rewriting whole paths, so a
parent folder named ``test`` cannot confuse the lookup (the original's
``path.replace('test', 'ground_truth')`` did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..images import list_images
from ..records import SampleRecord
from .classes import resolve_class_dir

NORMAL_NAMES = ("good", "normal", "ok")


def check_split(split: str) -> None:
    """Refuse a split other than train or test."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class StemIndex:
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
        """The first file in ``folders`` (in order) whose stem is one of ``stems``."""
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


def fg_stems(path: Path) -> tuple[str, str]:
    """Stems a mask of ``path`` may have: its own, or with a ``_mask`` suffix."""
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
    check_split(split)
    class_dir = resolve_class_dir(root, class_name)
    index = StemIndex()
    if split == "train":
        images: list[Path] = []
        for sub in spec.train:
            images = list_images(class_dir / sub)
            if images:
                break
        fg_dirs = [class_dir / sub for sub in spec.foreground]
        return [
            SampleRecord(p, 0, "good", foreground_path=index.find(fg_dirs, fg_stems(p)))
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


SPECS: dict[str, _Spec] = {
    "mvtec": MVTEC_SPEC, "mpdd": MVTEC_SPEC, "dtd": MVTEC_SPEC, "wfdd": MVTEC_SPEC,
    "headct": MVTEC_SPEC, "btad": BTAD_SPEC, "brats2021": BRATS_SPEC, "folder": FOLDER_SPEC,
    "demo": MVTEC_SPEC,
}


def foreground_folders(dataset: str, class_dir: Path) -> tuple[Path, Path]:
    """(training-image folder, foreground-mask folder) of a class, as its layout reads them.

    The mask folder is the first the layout searches, so generated masks are found again.
    """
    spec = SPECS[dataset]
    train = next((class_dir / sub for sub in spec.train if list_images(class_dir / sub)),
                 class_dir / spec.train[0])
    return train, class_dir / spec.foreground[0]
