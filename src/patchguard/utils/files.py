"""Writing files without losing the user's: atomic writes (a temp file beside the target,
fsynced, then renamed into place), a manifest of what patchguard wrote in each folder, the check
before replacing an existing file, and the lock of a folder that a run is writing.

The write rule (docs/errors-and-safety.md): a command writes only the files it names, and
replaces an existing file only when the folder's manifest (:data:`MANIFEST`) shows that
patchguard wrote exactly that content, or when the user passed ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

# mkstemp's names for a target NAME: ".NAME.<8 random characters>.tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object],
                       own: bool = True) -> Path:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it into place.

    Until the rename the previous file is untouched; on any failure (Ctrl-C included) the temp
    file is removed and an OSError names ``path``. With ``own`` the file is entered in its
    folder's manifest, so that a later command may replace it (:func:`written_by_us`).
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
        digest = file_digest(tmp) if own else None
        os.replace(tmp, path)
        if digest is not None:
            _update_manifest(path.parent, {path.name: digest})
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


def atomic_write_text(path: str | Path, text: str, own: bool = True) -> Path:
    """Write text atomically (temp file then rename); see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")), own)


@contextlib.contextmanager
def staged_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed into place (and entered in the
    manifest) when the block succeeds, removed when it fails (Ctrl-C included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record_outputs([path])


# ---------------------------------------------------------------------------- the manifest

#: In every folder patchguard writes outputs to: {file name: sha256 of what it wrote}.
MANIFEST = ".patchguard-outputs.json"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _update_manifest(folder: Path, entries: dict[str, str | None]) -> None:
    """Add (digest) or drop (None) entries; entries of files that are gone are pruned."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    for name, digest in entries.items():
        if digest is None:
            manifest.pop(name, None)
        else:
            manifest[name] = digest
    manifest = {k: v for k, v in manifest.items() if (folder / k).is_file()}
    text = json.dumps(dict(sorted(manifest.items())), indent=0) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=folder)
    except OSError as error:
        logger.debug("could not update %s: %s", folder / MANIFEST, error)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, folder / MANIFEST)
    except OSError as error:
        # The outputs themselves are written; without their entries they are only protected
        # more (a later command asks for --overwrite), never less.
        Path(tmp).unlink(missing_ok=True)
        logger.debug("could not update %s: %s", folder / MANIFEST, error)


def record_outputs(paths: Iterable[str | Path]) -> None:
    """Enter files just written (not through :func:`atomic_write_bytes`) in their manifests."""
    by_folder: dict[Path, dict[str, str | None]] = {}
    for path in paths:
        path = Path(path)
        if path.is_file():
            by_folder.setdefault(path.parent, {})[path.name] = file_digest(path)
    for folder, entries in by_folder.items():
        _update_manifest(folder, entries)


def written_by_us(path: str | Path) -> bool:
    """True when ``path`` holds exactly what a patchguard command wrote there (its manifest)."""
    path = Path(path)
    if not path.is_file():
        return False
    recorded = _read_manifest(path.parent).get(path.name)
    return recorded is not None and recorded == file_digest(path)


def foreign_files(paths: Iterable[str | Path]) -> list[Path]:
    """The existing files among ``paths`` that patchguard did not write (or that were changed)."""
    return [Path(p) for p in paths if Path(p).exists() and not written_by_us(p)]


def refuse_foreign(paths: Iterable[str | Path], flag: str, overwrite: bool = False,
                   fix: str = "choose another folder, or add --overwrite to replace them") -> None:
    """InputError naming the existing files among ``paths`` that a command would replace but
    did not write itself (nothing is refused with ``overwrite``)."""
    from .checks import InputError

    if overwrite:
        return
    found = foreign_files(paths)
    if found:
        listed = ", ".join(str(p) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise InputError(flag, str(found[0].parent), f"holds {len(found)} file(s) patchguard "
                         f"did not write, which this command would replace ({listed})", fix)


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
    without ``overwrite``. An existing file is replaced only with ``overwrite``, when its
    folder's manifest shows patchguard wrote it (:func:`written_by_us`), or when
    ``replaceable(path)`` says so; checkpoints are never replaced without ``overwrite``.
    InputError names the flag and what would be replaced.
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
        own = written_by_us(path)  # patchguard's checkpoints are never in a manifest
        ours = own or (replaceable is not None and replaceable(path))
        if (checkpoint and not own) or not ours:
            what = "a checkpoint" if checkpoint else "a file"
            raise InputError(flag, str(path), f"already exists and is {what} this command "
                             "would replace" + ("" if checkpoint else " (not one patchguard "
                                                "wrote, or changed since)"), fix)
    return path


def remove_own_outputs(folder: str | Path, pattern: str,
                       keep: Iterable[str | Path] = ()) -> list[Path]:
    """Remove the files in ``folder`` matching ``pattern`` that patchguard wrote (manifest and
    content agree), except ``keep``; a rerun with fewer inputs leaves no stale outputs, and a
    user's own files of the same names are never touched. Returns the removed files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    regex = re.compile(pattern)
    kept = {Path(p).name for p in keep}
    removed = [p for p in sorted(folder.iterdir()) if p.is_file() and regex.fullmatch(p.name)
               and p.name not in kept and written_by_us(p)]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        _update_manifest(folder, {p.name: None for p in removed})
    return removed


# ---------------------------------------------------------------------------- run folder lock

_HELD: dict[Path, int] = {}


def lock_folder(folder: str | Path, flag: str = "--output-dir") -> None:
    """Hold an exclusive lock on ``folder`` (created if needed) until :func:`unlock_folder`.

    The lock is ``flock`` on the folder itself: no file is written, and the kernel drops it
    when the process ends, however it ends. A folder locked by another run (another process, or
    another call in this one) is refused with an InputError. No-op where flock is missing.
    """
    from .checks import InputError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    folder = Path(folder).resolve()
    if folder in _HELD:
        raise InputError(flag, str(folder), "is being written by another run in this process",
                         "wait for it to finish, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise InputError(flag, str(folder), "is being written by another patchguard run right "
                         "now (two runs in one folder would mix their checkpoints and logs)",
                         "wait for it to finish, or choose another folder") from None
    _HELD[folder] = fd


def unlock_folder(folder: str | Path) -> None:
    """Release :func:`lock_folder`'s lock (nothing when it is not held)."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def refuse_inside(output: str | Path, flag: str, inputs: Iterable[tuple[str, str | Path]]) -> None:
    """InputError when an output folder is (inside) a folder the command reads: a data set
    would then hold the outputs, and the next run would read them as data."""
    from .checks import InputError

    out = Path(output).expanduser().resolve()
    for what, folder in inputs:
        if not folder:
            continue
        source = Path(folder).expanduser().resolve()
        if source.is_dir() and (out == source or source in out.parents):
            raise InputError(flag, str(output), f"is inside the {what} {folder}; what is "
                             "written there would be read back as data", "choose a folder "
                             "outside it, e.g. runs/NAME")
