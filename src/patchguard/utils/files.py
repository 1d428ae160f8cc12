"""Atomic file writes: a temp file beside the target, fsynced, then renamed into place."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

# mkstemp's names for a target NAME: ".NAME.<8 random characters>.tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it into place.

    Until the rename the previous file is untouched; on any failure (Ctrl-C included) the temp
    file is removed and an OSError names ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _naming(error, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as error:
        # Also on Ctrl-C: never leave a half-written file under the real name.
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            raise _naming(error, path) from None
        raise
    return path


def _naming(error: OSError, path: Path) -> OSError:
    """The same kind of OSError (errno kept), its message naming the file being written."""
    if str(path) in str(error):
        return error
    return OSError(error.errno, f"{error.strerror or error} while writing {path}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (temp file then rename)."""
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def temp_files(folder: str | Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Temporary files of :func:`atomic_write_bytes` in ``folder`` (of some targets only)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if targets is None else set(targets)
    found = []
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and (wanted is None or match["target"] in wanted):
            found.append(path)
    return sorted(found)


def remove_stale_temp_files(folder: str | Path, targets: Iterable[str] | None = None,
                            older_than_s: float = 0.0) -> list[Path]:
    """Remove what an interrupted write (kill -9, power loss) left behind; return the files.

    Only files named like this module's temporary files are touched; ``older_than_s`` spares a
    write that another process may still be doing.
    """
    now = time.time()
    removed = []
    for path in temp_files(folder, targets):
        try:
            stat = path.stat()
            if now - stat.st_mtime < older_than_s:
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
        logger.info("removed %s (%.1f MB), left by an interrupted write", path,
                    stat.st_size / 1e6)
    return removed


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def looks_like_checkpoint(path: str | Path) -> bool:
    """A file with a checkpoint's suffix, or a zip archive holding torch's ``data.pkl``."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_output_file(path: str | Path, flag: str, inputs: Iterable[tuple[str, Path]] = (),
                      overwrite: bool = False, replaceable: Callable[[Path], bool] | None = None,
                      fix: str = "choose another file, or add --overwrite") -> Path:
    """Refuse an output file that is a folder, one of the command's inputs, or existing work.

    ``inputs`` are (what, path) pairs the command reads; they are never written over, with or
    without ``overwrite``. An existing file is replaced only with ``overwrite`` or when
    ``replaceable(path)`` says it is the command's own kind of output (an earlier results
    file); checkpoints are never ``replaceable``. InputError names the flag and what would be
    replaced.
    """
    from .checks import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(flag, str(path), "is a folder", "give a file name")
    for what, source in inputs:
        source = Path(source)
        if path.resolve() == source.resolve() or (
                path.exists() and source.exists() and os.path.samefile(path, source)):
            raise InputError(flag, str(path), f"is the {what} this command reads",
                             "choose another file")
    if path.exists() and not overwrite:
        checkpoint = looks_like_checkpoint(path)
        if checkpoint or replaceable is None or not replaceable(path):
            what = "a checkpoint" if checkpoint else "a file"
            raise InputError(flag, str(path), f"already exists and is {what} this command "
                             "would replace", fix)
    return path


def remove_own_outputs(folder: str | Path, pattern: str) -> list[Path]:
    """Remove the files in ``folder`` whose names match ``pattern`` (a regular expression).

    Commands that write numbered outputs (heatmaps, panels) clear their previous ones first, so
    that a rerun with fewer inputs leaves no stale files; other files are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    regex = re.compile(pattern)
    removed = [p for p in folder.iterdir() if p.is_file() and regex.fullmatch(p.name)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
