"""Where the original authors' per-class checkpoints are: one Google Drive file per class.

The authors publish one ``patchguard_<dataset>_<class>.pth`` per class of MVTec AD and VisA
inside two Google Drive *folders* (:data:`DRIVE_FOLDERS`); their ``download_weight.py`` fetches
each class's *file* by id with gdown. Those file ids are not known to this package: no copy of
that script was available when it was written, and a folder cannot be listed over plain HTTP
without an API key. So :data:`KNOWN_FILES` holds an entry per class with no id, and a user who
copies the ids once passes them in one of three ways (first match wins):

1. ``--drive-id ID`` or ``--url URL`` on the command line (one class);
2. an index file, ``--index FILE`` (JSON or YAML), or the ``PATCHGUARD_WEIGHTS_INDEX``
   environment variable naming one::

       {"mvtec": {"bottle": "1AbC...", "cable": {"id": "1XyZ...", "sha256": "..."}},
        "visa": {"pcb1": "https://drive.google.com/file/d/1Pq.../view"}}

   or, for one data set, a flat ``{"bottle": "1AbC..."}``. A value is a Drive file id, a Drive
   file link, an http(s) URL, or a mapping with ``id`` or ``url`` and an optional ``sha256``;
3. the ids shipped here (none yet).

Without an id the error names the Drive folder and both ways out (pass the id, or download the
file by hand and ``patchguard import-checkpoint`` it).
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


#: One entry per class of the two data sets with published weights; no file id is known yet
#: (ids are never guessed: a wrong id would fetch another file).
KNOWN_FILES: dict[tuple[str, str], WeightsFile] = {
    (dataset, name): WeightsFile(dataset, name)
    for dataset in DATASETS for name in KNOWN_CLASSES[dataset]
}


def check_dataset_class(dataset: Any, class_name: Any) -> tuple[str, str]:
    """The (dataset, class) pair, refused with the allowed values when not published."""
    dataset = choice("dataset (--dataset)", dataset, DATASETS)
    classes = KNOWN_CLASSES[dataset]
    if not isinstance(class_name, str) or class_name not in classes:
        raise InputError("class_name (--class-name)", class_name,
                         f"is not a {dataset} class with published weights",
                         f"choose one of {', '.join(classes)}")
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
    """How to get a class's weights when no file id is known."""
    name = f"patchguard_{dataset}_{class_name}.pth"
    looked = f" ({index_path} has no entry for it)" if index_path else ""
    return (
        f"no Google Drive file id is known for the authors' {dataset} {class_name} weights "
        f"({name}){looked}. They are in the Drive folder {DRIVE_FOLDERS[dataset]}, which cannot "
        f"be listed without an API key. Either copy the file's id (or share link) from the "
        f"authors' download_weight.py or from the folder and pass it: --drive-id ID, or an "
        f"index file ('--index FILE' or {INDEX_ENV}=FILE, e.g. "
        f'{{"{dataset}": {{"{class_name}": "ID"}}}}); or download {name} in a browser and run '
        f"'patchguard import-checkpoint --original {name} --output "
        f"weights/{dataset}/{class_name}/last.pt'."
    )
