"""Where the original authors' per-class checkpoints are: one Google Drive file per class.

The authors publish one ``patchguard_<dataset>_<class>.pth`` per class of MVTec AD and VisA;
their ``download_weight.py`` fetches each by its Google Drive *file* id. Those ids ship here
(:data:`AUTHORS_FILE_IDS`, copied from that script): every published class downloads with no
flag. The authors publish no checkpoint for MVTec AD ``zipper``, nor for any other data set
(:data:`UNPUBLISHED`); asking for one says so. No SHA-256 is published: the first download's
digest is recorded in the imported checkpoint's model card (trust on first use).

Another location can still be given, first match wins:

1. ``--drive-id ID`` or ``--url URL`` on the command line (one class);
2. an index file, ``--index FILE`` (JSON or YAML), or the ``PATCHGUARD_WEIGHTS_INDEX``
   environment variable naming one::

       {"mvtec": {"bottle": "1AbC...", "cable": {"id": "1XyZ...", "sha256": "..."}},
        "visa": {"pcb1": "https://drive.google.com/file/d/1Pq.../view"}}

   or, for one data set, a flat ``{"bottle": "1AbC..."}``. A value is a Drive file id, a Drive
   file link, an http(s) URL, or a mapping with ``id`` or ``url`` and an optional ``sha256``;
3. the ids shipped here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.download.errors import ManualDownloadError
from ..data.download.transfer import drive_file_id, is_drive_folder
from ..data.layouts.classes import KNOWN_CLASSES
from ..utils.checks import InputError, choice

#: The environment variable that names an index file (used when --index is not given).
INDEX_ENV = "PATCHGUARD_WEIGHTS_INDEX"

#: The authors' weights folders, from their README's data set table.
DRIVE_FOLDERS = {
    "mvtec": "https://drive.google.com/drive/folders/1Wn_1cE700ORpRmSfDzOfOpYyhAjxsyHr",
    "visa": "https://drive.google.com/drive/folders/1_MYqikiJvTKp3z_ZHHVjViYF6Yn0oyVu",
}
DATASETS = tuple(DRIVE_FOLDERS)

_ID = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class WeightsFile:
    """One class's published checkpoint: where it is (if known) and how to check it."""

    dataset: str
    class_name: str
    drive_id: str | None = None
    url: str | None = None  # a plain http(s) URL, used when there is no Drive id
    sha256: str | None = None
    source: str = "built-in registry"  # where the location came from, for messages

    @property
    def filename(self) -> str:
        """The authors' file name, ``patchguard_<dataset>_<class>.pth``."""
        return f"patchguard_{self.dataset}_{self.class_name}.pth"

    @property
    def known(self) -> bool:
        """True when there is a Drive id or a URL to fetch it from."""
        return bool(self.drive_id or self.url)


#: The authors' Google Drive file ids, from their ``download_weight.py`` (rohban-lab/PatchGuard
#: at commit af39835). MVTec AD ``zipper`` has none: the authors never published it.
AUTHORS_FILE_IDS: dict[str, dict[str, str]] = {
    "mvtec": {
        "bottle": "1vAV5zzVxx6SqLlirkP0kibEileHxKflz",
        "cable": "1mNWWZXmr07bsxOkSY2FerNPM5nSMFIz6",
        "capsule": "1THd1QZhCOSbknYMP_lLsALfsn66tt8zh",
        "carpet": "1x1N0K33_gaymE6UHmWRYdVem_n2UUJsY",
        "grid": "1LvsbOqD2e_GLuOxEtGvlUiq9DGhmGTOX",
        "hazelnut": "1F8lFOX19_fhEUJjPnlg_vYkzFwAFa8lt",
        "leather": "13_rrkYu4-87zv1TeEngkwTIonBbgTPmO",
        "metal_nut": "1MYM56tOgznEGwqUvKxzRedL6gVL5xw8q",
        "pill": "1teEY-5VUMOhpTlPzyYaBsW82u0x2-ipg",
        "screw": "1Lb8IIRGpBqG7j53Pw0KvPRuAF_Q0YKD8",
        "tile": "1vKh-eidKw3bb9l6l9jCA8sqpl0RYqaJ0",
        "toothbrush": "1Mcmi4FxqigGv3p-M7lLYX_gDWr1drvvt",
        "transistor": "1ap1HRkciis4IWoczqPo_Pr7UZsOMUxwe",
        "wood": "1uMzkccZaV4f0yMf0AVt3usiniaNKy5fY",
    },
    "visa": {
        "candle": "16LM-735VfnK7Zxa1VJ4xJ3AnpuU11T5F",
        "capsules": "1L7EiRCgvcPeAoPEVoxFP0Urk9-z-0fC1",
        "cashew": "1hwnmbVyZqPeHj4zD92EB-BKfn9CDs8vU",
        "chewinggum": "1Lrl26QthpI6dUlIEDAYNnVSju1fyjEdQ",
        "fryum": "1YTxzmXCe-sh8dWa1h3bhC4eiPpihG7nW",
        "macaroni1": "1UNVTVKmo6ch3D5eeseSwVKUpC-E0mkuY",
        "macaroni2": "1tRoyS0dnOUKvGYnUbu2E44269b1CFmx5",
        "pcb1": "1nuBmi4J2mNHvYoVO1AFuzTt-nymDEKCq",
        "pcb2": "1j5_YR9_qcQP8cwYy3foxgiUUBEiil_nK",
        "pcb3": "1p5MAuXvUdg-wqKFSo3lWc6vqU4ochYiW",
        "pcb4": "1WPWVcsYq0wEA275_dLN4tB-f_Ri-px_l",
        "pipe_fryum": "1JV3Q4lyIz8b98yZyH2aKHlfAg0FM5yla",
    },
}
AUTHORS_SOURCE = "the authors' download_weight.py"

#: One entry per published class (with its id) and per class the authors left out (none).
KNOWN_FILES: dict[tuple[str, str], WeightsFile] = {
    (dataset, name): WeightsFile(dataset, name, AUTHORS_FILE_IDS[dataset].get(name),
                                 source=AUTHORS_SOURCE)
    for dataset in DATASETS for name in KNOWN_CLASSES[dataset]
}

#: The data sets of the paper with no published checkpoints (the authors' README: "-").
UNPUBLISHED = tuple(name for name in KNOWN_CLASSES
                    if name not in DATASETS and name not in ("folder", "visa-patchguard", "demo"))


def check_dataset(dataset: Any) -> str:
    """A data set with published weights; any other data set of the paper says it has none."""
    if isinstance(dataset, str) and dataset in UNPUBLISHED:
        raise ManualDownloadError(
            f"the authors publish no checkpoints for --dataset {dataset} (their README lists "
            f"'-'; only {' and '.join(DATASETS)} have per-class weights). Train one with "
            f"'patchguard train --dataset {dataset} ...', or give a checkpoint file.")
    return choice("dataset (--dataset)", dataset, DATASETS)


def check_dataset_class(dataset: Any, class_name: Any) -> tuple[str, str]:
    """The (dataset, class) pair, refused with the allowed values when unknown.

    A data set of the paper without published weights (MPDD, BTAD, ...) is a
    ManualDownloadError that says so; a class outside the data set is an InputError listing the
    published ones. A known class without an id (MVTec AD ``zipper``) passes here: a location
    may still come from a flag or an index (:func:`resolve_weights` says what is missing).
    """
    dataset = check_dataset(dataset)
    if not isinstance(class_name, str) or class_name not in KNOWN_CLASSES[dataset]:
        published = [name for name in KNOWN_CLASSES[dataset]
                     if AUTHORS_FILE_IDS[dataset].get(name)]
        raise InputError("class_name (--class-name)", class_name,
                         f"is not a {dataset} class", f"choose one of {', '.join(published)}")
    return dataset, class_name


def _location(value: Any, name: str) -> dict[str, str | None]:
    """A Drive id, Drive file link or http(s) URL (or a mapping of them) as id / url / sha256."""
    sha = None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"id", "url", "sha256"})
        if unknown:
            raise InputError(name, dict(value), f"has unknown key(s) {unknown}",
                             "use id, url and sha256")
        sha = value.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise InputError(f"{name}.sha256", sha, "must be a sha256 hex digest (64 characters)")
        if ("id" in value) == ("url" in value):
            raise InputError(name, dict(value), "must hold exactly one of id and url")
        value = value.get("id", value.get("url"))
    if not isinstance(value, str) or not value.strip():
        raise InputError(name, value, "must be a Google Drive file id, a Drive file link or an "
                         "http(s) URL")
    value = value.strip()
    if is_drive_folder(value):
        raise InputError(name, value, "is a Google Drive folder, not a file",
                         "open the folder, choose the class's file and copy its link or id")
    if _ID.match(value):
        return {"drive_id": value, "url": None, "sha256": sha}
    if "drive.google.com" in value or value.startswith("gdrive:"):
        file_id = drive_file_id(value)
        if not file_id:
            raise InputError(name, value, "holds no Drive file id",
                             "copy the file's 'share' link (.../file/d/ID/view)")
        return {"drive_id": file_id, "url": None, "sha256": sha}
    if re.match(r"^https?://", value):
        return {"drive_id": None, "url": value, "sha256": sha}
    raise InputError(name, value, "is not a Google Drive file id (10 or more letters, digits, "
                     "- or _), a Drive file link or an http(s) URL")


def read_index(path: str | Path, dataset: str) -> dict[str, WeightsFile]:
    """The classes of ``dataset`` in an index file (JSON or YAML), checked entry by entry."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights index {path} does not exist")
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"weights index {path} is not readable JSON or YAML ({error})") from None
    if not isinstance(payload, Mapping):
        raise InputError(f"weights index {path}", payload,
                         "must map data sets to {class: id} (or classes to ids)")
    if any(key in DATASETS for key in payload):
        # Nested by data set; a data set missing from the file just has no entries.
        entries = payload.get(dataset) or {}
        prefix = f"{path}: {dataset}."
        if not isinstance(entries, Mapping):
            raise InputError(f"{path}: {dataset}", entries, "must map class names to ids")
    else:
        entries, prefix = payload, f"{path}: "
    found = {}
    for name, value in entries.items():
        if not isinstance(name, str) or name not in KNOWN_CLASSES[dataset]:
            raise InputError(f"{prefix}{name}", value, f"is not a {dataset} class",
                             f"classes: {', '.join(KNOWN_CLASSES[dataset])}")
        found[name] = WeightsFile(dataset, name, **_location(value, f"{prefix}{name}"),
                                  source=f"index {path}")
    return found


def resolve_weights(
    dataset: str,
    class_name: str,
    drive_id: str | None = None,
    url: str | None = None,
    index: str | Path | None = None,
    sha256: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> WeightsFile:
    """Where to fetch one class's checkpoint from: flags, then the index file, then built-in.

    Raises ManualDownloadError naming the Drive folder when no location is known.
    """
    dataset, class_name = check_dataset_class(dataset, class_name)
    environ = os.environ if environ is None else environ
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise InputError("--sha256", sha256, "must be a sha256 hex digest (64 characters)")
    if drive_id is not None and url is not None:
        raise InputError("--drive-id", drive_id, "cannot be combined with --url",
                         "give one of them")
    entry: WeightsFile | None = None
    if drive_id is not None or url is not None:
        flag = "--drive-id" if drive_id is not None else "--url"
        location = _location(drive_id if drive_id is not None else url, flag)
        entry = WeightsFile(dataset, class_name, **location, source=flag)
    else:
        index_path = index if index is not None else (environ.get(INDEX_ENV) or None)
        if index_path is not None:
            entry = read_index(index_path, dataset).get(class_name)
        if entry is None:
            entry = KNOWN_FILES[(dataset, class_name)]
    if sha256 is not None:
        entry = replace(entry, sha256=sha256.lower())
    if not entry.known:
        raise ManualDownloadError(unknown_message(dataset, class_name, index_path=(
            index if index is not None else environ.get(INDEX_ENV))))
    return entry


def unknown_message(dataset: str, class_name: str, index_path: str | Path | None = None) -> str:
    """Why no location is known for a class (the authors never published it), and the ways out."""
    name = f"patchguard_{dataset}_{class_name}.pth"
    looked = f" and {index_path} has no entry for it" if index_path else ""
    return (
        f"the authors publish no checkpoint for {dataset} {class_name} (their "
        f"download_weight.py has no entry for it{looked}). Train one with 'patchguard train "
        f"--dataset {dataset} --class-name {class_name} ...'; or, if you have {name} from "
        f"elsewhere, pass its location (--drive-id ID, --url URL, or an index file: '--index "
        f"FILE' or {INDEX_ENV}=FILE) or import the file: 'patchguard import-checkpoint "
        f"--original {name} --output weights/{dataset}/{class_name}/last.pt'."
    )
