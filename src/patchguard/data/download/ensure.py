"""Fetch a data set only when it is missing (``train --download`` / ``test --download``, the
original's ``--use_data_prep``)."""

from __future__ import annotations

import logging
from pathlib import Path

from ...utils.checks import InputError
from .sources import get_source

log = logging.getLogger(__name__)


def default_dataset_dir(dataset: str) -> Path:
    """Where ``--download`` puts a data set when no --dataset-dir is given: datasets/<name>."""
    return Path("datasets") / get_source(dataset).dirname


def dataset_present(dataset_dir: str | Path, class_name: str | None) -> bool:
    """True when the folder exists and holds the class folder (when one is named)."""
    root = Path(dataset_dir).expanduser()
    return root.is_dir() and (not class_name or (root / class_name).is_dir())


def ensure_dataset(dataset: str, dataset_dir: str | Path | None, class_name: str | None,
                   progress: bool = True) -> Path:
    """The data set folder, downloaded with :func:`download_dataset` first when it is missing.

    The download lands in ``PARENT/<name>`` (``datasets/mvtec`` for mvtec), so a given
    --dataset-dir must end in that name; otherwise it is refused before anything is fetched.
    """
    from .prepare import download_dataset

    source = get_source(dataset)
    root = Path(dataset_dir).expanduser() if dataset_dir else default_dataset_dir(dataset)
    if dataset_present(root, class_name):
        return root
    if root.name != source.dirname:
        raise InputError("--dataset-dir", str(root), f"is missing, and --download puts "
                         f"{source.name} into a folder named {source.dirname!r}",
                         f"give --dataset-dir {root.parent / source.dirname}, or download by "
                         "hand with 'patchguard data download'")
    log.info("%s not found: downloading %s into %s", root / (class_name or ""), source.name,
             root)
    prepared = download_dataset(dataset, root.parent, progress=progress)
    if not dataset_present(prepared, class_name):
        raise InputError("--class-name", class_name, f"is not a class of the downloaded "
                         f"{source.name} in {prepared}")
    return prepared
