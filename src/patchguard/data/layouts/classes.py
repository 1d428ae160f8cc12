"""The known classes of every data set, and finding class folders under a data set root."""

from __future__ import annotations

import logging
from pathlib import Path

from ..records import DatasetError

logger = logging.getLogger(__name__)

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
    # The data set `patchguard demo` generates (patchguard.demo.dataset), in MVTec AD's layout:
    # named for what it is, so that its classes are known ones (in this order: the builder seeds
    # each class by its position).
    "demo": ["brick", "grass", "gravel", "washer"],
}
KNOWN_CLASSES["visa-patchguard"] = KNOWN_CLASSES["visa"]

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


def resolve_class_dir(root: str | Path, class_name: str) -> Path:
    """``<root>/<class_name>``, or root itself when it already is a class folder.

    A class name is a single folder name (:func:`patchguard.utils.checks.path_component`): one
    holding ``/`` or ``..`` would read outside the data set.
    """
    from ...utils.checks import path_component

    if class_name:
        path_component("class_name (--class-name)", class_name)
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


SINGLE_CLASS = ("brats2021", "headct")


def default_class_name(dataset: str, root: str | Path) -> str | None:
    """The class of a single-class data set when none is given, or None.

    ``brats2021`` and ``headct`` have one class; a ``folder`` data set has one when ``root`` is
    the class folder itself (it holds ``train/``, ``test/`` or ``good/``) or holds exactly one
    class folder. ``root`` may then be the class folder, as in the authors' code.
    """
    root = Path(root).expanduser()
    if dataset in SINGLE_CLASS:
        return KNOWN_CLASSES[dataset][0]
    if dataset != "folder" or not root.is_dir():
        return None
    if _looks_like_class(root):
        return root.name
    found = discover_classes(root)
    return found[0] if len(found) == 1 else None


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
