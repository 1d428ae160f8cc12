"""Checkpoints: atomic writes and safe loading (no arbitrary unpickling)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    except BaseException:
        # Also on Ctrl-C: never leave a half-written file under the real name.
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (temp file then rename)."""
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save a checkpoint dict atomically; it must hold only tensors and plain Python values."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    return atomic_write_bytes(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse files that need unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(
            f"cannot load checkpoint {path} safely ({type(error).__name__}: {error}); it is "
            "truncated, not a patchguard checkpoint, or holds arbitrary Python objects"
        ) from error
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError(
            f"{path} is not a patchguard checkpoint (no 'model'/'config' entries); original "
            "PatchGuard state dicts need converting first"
        )
    return payload
