"""Checkpoints: atomic writes and safe loading (no arbitrary unpickling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import atomic_write_bytes

FORMAT_VERSION = 1


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
