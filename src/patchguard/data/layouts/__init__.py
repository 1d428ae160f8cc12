"""Data set layouts of every data set of the paper, a generic folder layout, and validation.

Each layout is a function ``(root, class_name, split) -> list[SampleRecord]`` registered in
:data:`.registry.LAYOUTS`. Readers never rewrite whole paths (a parent folder named ``test``
cannot confuse mask lookup) and never raise for a missing mask: problems are collected by
:func:`.validation.find_problems`, which :func:`load_records` and
:func:`.validation.inspect_layout` share, so training, testing and ``patchguard data info``
report a broken layout with the same words.

Modules: ``classes`` (known class names, finding class folders), ``folders`` (one test folder per
defect type: MVTec AD and relatives, BTAD, BraTS2021, ``folder``), ``visa``, ``registry``,
``validation``.

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

from pathlib import Path

from ..records import DatasetError, SampleRecord
from .classes import (
    KNOWN_CLASSES,
    SINGLE_CLASS,
    default_class_name,
    discover_classes,
    known_classes,
    resolve_class_dir,
    warn_unknown_class,
)
from .registry import LAYOUTS, get_layout
from .validation import find_problems, inspect_layout, problems_message

__all__ = ["KNOWN_CLASSES", "LAYOUTS", "SINGLE_CLASS", "default_class_name", "discover_classes",
           "find_problems", "inspect_layout", "known_classes", "load_records", "problems_message",
           "resolve_class_dir"]


def load_records(
    dataset: str, root: str | Path, class_name: str, split: str, validate: bool = True
) -> list[SampleRecord]:
    """Records of one class and split of a registered layout, refused when the layout is broken.

    With ``validate`` (the default) the split is checked by :func:`find_problems` (empty split,
    anomalous images without masks, masks of the wrong size, unreadable files) and every problem
    is reported in one :class:`DatasetError`, as ``patchguard data info`` lists them.
    """
    from ...utils.checks import path_component

    layout = get_layout(dataset)
    path_component("class_name (--class-name)", class_name, allow_empty=True)
    warn_unknown_class(dataset, class_name)
    records = layout(root, class_name, split)
    if not validate:
        return records
    problems = find_problems(records, split, resolve_class_dir(root, class_name))
    if problems:
        raise DatasetError(problems_message(dataset, root, class_name, problems))
    return records
