"""A whole data set: fetch its archives, extract them safely, place the foreground masks, check
the layout, and write a marker so that a second run does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

from ...utils.files import atomic_write_text
from ..images import IMAGE_EXTENSIONS
from .errors import DownloadError, LayoutError, ManualDownloadError
from .extraction import move_into, safe_extract
from .sources import Archive, DatasetSource, get_source
from .transfer import fetch_archive, folder_error, is_drive_folder

log = logging.getLogger(__name__)

#: Written into a data set's root once download, extraction and layout check succeeded.
MARKER_NAME = ".patchguard-download.json"

def check_layout(source: DatasetSource, root: str | os.PathLike[str]) -> list[str]:
    """Expected paths missing under ``root`` (empty when the layout is complete)."""
    root = Path(root)
    return [p for p in source.expected_paths() if not (root / p).exists()]


def _class_probes(source: DatasetSource) -> list[list[str]]:
    """Per class, the paths its layout requires (for archives that hold some classes only)."""
    templates = [t for t in source.required if "{cls}" in t]
    if not templates:
        return []
    return [[t.format(cls=c) for t in templates] for c in source.classes]


def _absent_classes(source: DatasetSource, *roots: Path) -> list[str]:
    """Classes none of whose required paths exist under any of ``roots``."""
    probes = _class_probes(source)
    return [cls for cls, paths in zip(source.classes, probes)
            if not any((root / p).exists() for root in roots for p in paths)]


def _only_complete_classes(source: DatasetSource, staging: Path) -> bool:
    """The unpacked archives hold class folders only, each with its whole layout."""
    folders = {d.name for d in staging.iterdir() if d.is_dir()}
    complete = {cls for cls, paths in zip(source.classes, _class_probes(source))
                if all((staging / p).exists() for p in paths)}
    return bool(folders) and folders <= complete


def _find_layout_root(tree: Path, source: DatasetSource, depth: int = 3) -> Path:
    """The directory inside an extracted tree that holds the data set (class folders).

    The whole data set's layout is looked for first; then a folder holding one or more
    complete class folders (a per-class archive such as ``bottle.tar.gz`` with ``bottle/`` at
    its top, as many mirrors ship MVTec AD: its class folder is not a wrapper to strip).
    """
    probes = source.expected_paths()
    per_class = _class_probes(source)
    frontier = [tree]
    for _ in range(depth + 1):
        for d in frontier:
            if probes and all((d / p).exists() for p in probes):
                return d
        for d in frontier:
            if any(all((d / p).exists() for p in paths) for paths in per_class):
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()]
    # Fallback: descend through single-directory wrappers (e.g. "BTech_Dataset_transformed/").
    d = tree
    while True:
        subdirs = [c for c in d.iterdir() if c.is_dir()]
        files = [c for c in d.iterdir() if not c.is_dir()]
        # A class's own folder is not a wrapper (a per-class archive missing some of it).
        if len(subdirs) == 1 and not files and subdirs[0].name not in source.classes:
            d = subdirs[0]
        else:
            return d


def _image_dirs(tree: Path) -> list[tuple[Path, int]]:
    out = []
    for dirpath, _, filenames in os.walk(tree):
        n = sum(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames)
        if n:
            out.append((Path(dirpath), n))
    return out


def _best_mask_dir(tree: Path) -> Path | None:
    dirs = _image_dirs(tree)
    if not dirs:
        return None
    named = [d for d in dirs if "foreground" in d[0].name.lower()]
    return max(named or dirs, key=lambda d: d[1])[0]


def _place_foreground(tree: Path, source: DatasetSource, ds_root: Path,
                      overwrite: bool = False) -> list[str]:
    """Move mask images from an extracted archive into the layout; return classes served.

    Masks already in the layout are kept unless ``overwrite``.
    """
    placed: list[str] = []
    classes = source.classes or ("",)
    for cls in classes:
        if cls:
            candidates = [
                Path(p) / d
                for p, dirs, _ in os.walk(tree)
                for d in dirs
                if d.lower() == cls.lower()
            ]
            src = None
            for cand in candidates:
                src = _best_mask_dir(cand)
                if src is not None:
                    break
        else:
            src = _best_mask_dir(tree)
        if src is None:
            continue
        dest = ds_root / source.foreground_dir.format(cls=cls)
        dest.mkdir(parents=True, exist_ok=True)
        kept = 0
        for f in src.iterdir():
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                if (dest / f.name).exists() and not overwrite:
                    kept += 1
                    continue
                os.replace(f, dest / f.name)
        if kept:
            log.warning("kept %d foreground mask(s) already in %s; pass --overwrite to replace "
                        "them", kept, dest)
        placed.append(cls or source.name)
    return placed


_IGNORED_FOLDERS = ("__MACOSX",)  # written by macOS's zip, never data


def _class_folders(tree: Path, source: DatasetSource, archive: Path) -> list[Path]:
    """The top-level class folders of one of the authors' mask zips, all checked first.

    Single wrapper folders that are not classes are looked through. A folder that is no class
    of the data set refuses the whole archive (nothing is placed): it is another data set's zip.
    """
    top = tree
    for _ in range(3):
        entries = [e for e in top.iterdir() if e.name not in _IGNORED_FOLDERS
                   and not e.name.startswith(".")]
        folders = [e for e in entries if e.is_dir()]
        if len(folders) == 1 and len(entries) == 1 and folders[0].name not in source.classes:
            top = folders[0]
            continue
        break
    unknown = sorted(f.name for f in folders if f.name not in source.classes)
    if unknown:
        raise LayoutError(
            f"the foreground-mask archive {archive} holds folder(s) {unknown} that are not "
            f"{source.name} classes ({', '.join(source.classes)}); nothing was placed. Is it "
            f"the {source.name} mask zip?")
    return sorted(folders)


def _place_class_folders(tree: Path, source: DatasetSource, ds_root: Path, archive: Path,
                         overwrite: bool = False) -> list[str]:
    """Move each class folder of the authors' zip to ``foreground_dir``; return classes placed.

    A class whose folder is not in the data set (a partial download) is skipped with a
    warning rather than created half. Masks already in place are kept unless ``overwrite``.
    """
    placed: list[str] = []
    for folder in _class_folders(tree, source, archive):
        name = folder.name
        if not (ds_root / name).is_dir():
            log.warning("skipped the foreground masks of %s: %s is not in the data set",
                        name, ds_root / name)
            continue
        dest = ds_root / source.foreground_dir.format(cls=name)
        kept = move_into(folder, dest, replace=overwrite)
        if kept:
            log.warning("kept %d foreground mask(s) already in %s; pass --overwrite to replace "
                        "them", len(kept), dest)
        placed.append(name)
    return placed


def _extract_to_temp(archive: Path, parent: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=parent))
    try:
        safe_extract(archive, tmp / "x")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a refused archive leaves nothing behind
        raise
    return tmp


def download_foreground(
    name: str,
    root: str | os.PathLike[str],
    progress: bool = True,
    archive: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Fetch (or take from ``archive``) the published foreground masks; return classes served.

    A download that turns out not to be a usable archive is deleted (the next run fetches it
    again) and the error says so; nothing is placed from a refused archive.
    """
    source = get_source(name)
    root = Path(root)
    ds_root = root / source.dirname
    if not source.foreground and archive is None:
        raise ManualDownloadError(
            f"No foreground masks are published for {name}; generate them with "
            f"`patchguard data foreground --dataset {name}` (textures: the whole image)."
        )
    downloads = root / ".downloads"
    owned = archive is None
    try:
        if archive is not None:
            files = [Path(archive)]
        else:
            files = []
            for item in source.foreground:
                if is_drive_folder(item.url):
                    raise folder_error(
                        item.url, f"The {name} foreground-mask release", "--foreground-archive"
                    )
                downloads.mkdir(parents=True, exist_ok=True)
                files.append(fetch_archive(item, downloads / item.filename, progress,
                                           f"{name} masks"))
        placed: list[str] = []
        for f in files:
            try:
                tmp = _extract_to_temp(f, root)
            except ValueError as error:
                if owned:
                    f.unlink(missing_ok=True)
                    raise ValueError(f"{error} (the downloaded {f.name} was deleted; run the "
                                     "command again to fetch it again)") from None
                raise
            try:
                if source.foreground_layout == "class_folders":
                    placed += _place_class_folders(tmp / "x", source, ds_root, f, overwrite)
                else:
                    placed += _place_foreground(tmp / "x", source, ds_root, overwrite)
            except LayoutError:
                if owned:
                    f.unlink(missing_ok=True)  # the wrong file: fetch again once it is fixed
                raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if owned and downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()  # a failed first fetch leaves no empty folder behind
    if not placed:
        raise LayoutError(
            f"the foreground-mask archive(s) {[str(f) for f in files]} held no mask images for "
            f"any class of {name} ({', '.join(source.classes) or 'single class'})"
        )
    info = _read_marker(ds_root / MARKER_NAME)
    if info is not None and info.get("dataset") == source.name:
        # A prepared data set remembers its masks: the next run does not fetch them again.
        info.update(foreground_classes=placed, foreground_note="")
        atomic_write_text(ds_root / MARKER_NAME, json.dumps(info, indent=2))
    return placed


def _fetchable(archives: Iterable[Archive]) -> bool:
    """True when every archive can be fetched without a browser (no Drive folder)."""
    archives = list(archives)
    return bool(archives) and not any(is_drive_folder(a.url) for a in archives)


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    progress: bool = True,
    archive: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    *,
    foreground: bool = True,
    foreground_archive: str | os.PathLike[str] | None = None,
    keep_archives: bool = False,
    overwrite: bool = False,
) -> Path:
    """Download (or take ``archive``), extract, check and mark a data set; return its root.

    Archives are unpacked and merged in a temporary folder, and the layout is checked there:
    an incomplete data set moves nothing into the data set folder. Files already in that folder
    are kept (and listed in the log) unless ``overwrite``.
    """
    source = get_source(name)
    root = Path(root)
    ds_root = root / source.dirname
    marker = ds_root / MARKER_NAME
    info = _read_marker(marker)
    if info is not None and info.get("dataset") == source.name:
        # Masks given now, or published by file id and not placed yet (an earlier run failed
        # to fetch them, or predates their ids): fetch them into the prepared data set.
        if foreground and (foreground_archive is not None or (
                not info.get("foreground_classes") and _fetchable(source.foreground))):
            download_foreground(name, root, progress, foreground_archive, overwrite)
        log.info("%s already prepared at %s (remove %s to redo)", source.name, ds_root, marker)
        return ds_root
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / ".downloads"
    if archive is not None:
        items = [archive] if isinstance(archive, (str, os.PathLike)) else list(archive)
        files = [Path(a) for a in items]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"archive {f} does not exist")
    elif source.manual:
        raise ManualDownloadError(source.manual)
    else:
        files = [
            fetch_archive(item, downloads / item.filename, progress, f"The {source.name} archive")
            for item in source.archives
        ]
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        for f in files:
            tmp = _extract_to_temp(f, root)
            try:
                move_into(_find_layout_root(tmp / "x", source), staging)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        missing = [p for p in source.expected_paths()
                   if not (staging / p).exists() and not (ds_root / p).exists()]
        absent = _absent_classes(source, staging, ds_root) if archive is not None else []
        if missing and absent and _only_complete_classes(source, staging) and set(missing) == {
                p for paths in _class_probes(source) for p in paths
                if p.split("/", 1)[0] in absent}:
            # Archives of some classes (one per class, by hand): those are prepared; the data
            # set is marked complete only once every class is there.
            log.warning("%s: prepared the class(es) in %s; %d class(es) are not in them (%s): "
                        "add their archives later the same way", source.name,
                        ", ".join(f.name for f in files), len(absent), ", ".join(absent))
            missing = []
        if missing:
            # What is missing from the classes the archives do hold comes first.
            missing.sort(key=lambda p: not (staging / p.split("/", 1)[0]).is_dir())
            shown = ", ".join(missing[:10]) + (
                f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
            )
            raise LayoutError(
                f"{source.name} from {', '.join(str(f) for f in files)} is incomplete; missing: "
                f"{shown}. Nothing was moved into {ds_root}."
            )
        kept = move_into(staging, ds_root, replace=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if kept:
        log.warning("kept %d file(s) already in %s instead of the archive's (e.g. %s); pass "
                    "--overwrite to replace them", len(kept), ds_root, kept[0])
    if archive is not None and _absent_classes(source, ds_root, ds_root):
        return ds_root  # some classes only: no marker, no foreground masks yet
    fg_classes: list[str] = []
    fg_note = ""
    if foreground and (source.foreground or foreground_archive is not None):
        try:
            fg_classes = download_foreground(name, root, progress, foreground_archive,
                                             overwrite)
        except (DownloadError, LayoutError, ValueError) as exc:
            # The data set itself is complete: keep it, and let a rerun fetch the masks.
            fg_note = str(exc)
            warnings.warn(
                f"{source.name} is ready but its foreground masks were not fetched: {exc} "
                "Without them training generates masks automatically"
                + ("; run the command again to retry them." if _fetchable(source.foreground)
                   else "."),
                stacklevel=2,
            )
    atomic_write_text(marker,
        json.dumps(
            {
                "dataset": source.name,
                "archives": [f.name for f in files],
                "foreground_classes": fg_classes,
                "foreground_note": fg_note,
                "license": source.license,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
    )
    if not keep_archives and archive is None:
        for f in files:
            f.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return ds_root
