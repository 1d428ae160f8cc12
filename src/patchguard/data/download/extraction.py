"""Safe archive extraction: no absolute paths, no ``..``, no links leaving the target."""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from .errors import UnsafeArchiveError

log = logging.getLogger(__name__)

# What a truncated or damaged archive raises while it is read.
_CORRUPT = (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
            gzip.BadGzipFile)

def _member_parts(name: str) -> list[str]:
    """Validate an archive member name and return its path components."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..' (path traversal)")
    return parts


def _link_escapes(member_parts: list[str], linkname: str, relative_to_member: bool) -> bool:
    norm = linkname.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    base = member_parts[:-1] if relative_to_member else []
    joined = posixpath.normpath(posixpath.join("/".join(base) or ".", norm))
    return joined == ".." or joined.startswith("../")


def _check_tar(tar: tarfile.TarFile) -> None:
    links: set[str] = set()
    for member in tar.getmembers():
        parts = _member_parts(member.name)
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is written through the link "
                    f"{'/'.join(parts[:i])!r}"
                )
        if member.issym() or member.islnk():
            if _link_escapes(parts, member.linkname, relative_to_member=member.issym()):
                kind = "symlink" if member.issym() else "hardlink"
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is a {kind} to {member.linkname!r}, "
                    "outside the extraction target"
                )
            links.add("/".join(parts))
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"archive member {member.name!r} is a device or FIFO; refusing to extract it"
            )


def _check_zip(zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _member_parts(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"archive member {info.filename!r} is a symlink (refused)")


def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    # A zip cut short loses its central directory (at the end) and is not recognised at all.
    raise ValueError(f"{path} is neither a zip nor a (compressed) tar archive: truncated, or "
                     "not an archive (an HTML page saved instead of the file?)")


def move_into(src: Path, dest: Path, replace: bool = True) -> list[Path]:
    """Move the contents of ``src`` into ``dest``, merging directories.

    An existing file in ``dest`` is replaced only with ``replace``; otherwise it is kept and
    returned in the list (the incoming one is left in ``src``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    kept: list[Path] = []
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            kept += move_into(entry, target, replace)
        elif target.exists() or target.is_symlink():
            if not replace:
                kept.append(target)
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        else:
            os.replace(entry, target)
    return kept


def safe_extract(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract a zip or tar(.gz/.xz/.bz2) into ``target``, refusing anything that escapes it.

    Every refusal names the archive; a truncated or damaged archive is a ValueError saying so,
    and nothing is left behind in either case.
    """
    archive, target = Path(archive), Path(target)
    try:
        kind = _archive_kind(archive)  # reading the first member may already hit the damage
    except _CORRUPT as error:
        raise ValueError(f"archive {archive} is truncated or corrupt ({type(error).__name__}: "
                         f"{error}); download it again") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf)
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tar:
                _check_tar(tar)
                try:
                    tar.extractall(tmp, filter="data")
                except tarfile.FilterError as exc:  # defence in depth; our checks ran first
                    raise UnsafeArchiveError(f"refused by tarfile's data filter: {exc}") from exc
                except TypeError:  # Python without extraction filters
                    tar.extractall(tmp)  # noqa: S202 - every member was checked above
        if target.exists():
            move_into(tmp, target)
        else:
            os.replace(tmp, target)
    except UnsafeArchiveError as error:
        raise UnsafeArchiveError(f"archive {archive}: {error}; nothing was extracted") from None
    except _CORRUPT as error:
        raise ValueError(f"archive {archive} is truncated or corrupt ({type(error).__name__}: "
                         f"{error}); download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
