"""Checkpoints: atomic writes and safe loading (no arbitrary unpickling)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write_bytes, remove_stale_temp_files

FORMAT_VERSION = 1
# A temporary file this old cannot belong to a write still in progress.
_STALE_AFTER_S = 600.0


def _cause(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or OSError that torch's writer wrapped into a RuntimeError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (KeyboardInterrupt, OSError)):
            return error
        error = error.__cause__ or error.__context__
    return None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save a checkpoint dict atomically; it must hold only tensors and plain Python values.

    The previous file stays intact when the write fails. torch reports a Ctrl-C or a full disk
    inside its writer as ``RuntimeError: [enforce fail at inline_container.cc]``; the real cause
    is raised instead (KeyboardInterrupt, or an OSError naming the file).
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **payload}
    remove_stale_temp_files(path.parent, [path.name], older_than_s=_STALE_AFTER_S)
    try:
        return atomic_write_bytes(path, lambda handle: torch.save(payload, handle))
    except RuntimeError as error:
        cause = _cause(error)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted while writing {path}") from None
        if isinstance(cause, OSError):
            message = cause.strerror or str(cause)
            if str(path) not in message:
                message += f" while writing {path}"
            raise OSError(cause.errno, message) from None
        raise


def model_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names and values (which model a result belongs to)."""
    digest = hashlib.sha256()
    for key in sorted(weights):
        tensor = weights[key]
        digest.update(key.encode())
        if isinstance(tensor, torch.Tensor):
            digest.update(str(tuple(tensor.shape)).encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse files that need unpickling code."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the file, e.g. "
                                f"{path / 'last.pt'}")
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
