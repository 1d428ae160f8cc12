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
        return atomic_write_bytes(path, lambda handle: torch.save(payload, handle), own=False)
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


def load_failure(error: BaseException, path: str | Path | None = None) -> str:
    """torch.load's error in a few words, without its advice to pass ``weights_only=False``
    (which would run whatever code the file holds: never advise that)."""
    if path is not None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(256).lstrip().lower()
        except OSError:
            head = b""
        if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
            return ("it is an HTML page (a sign-in, quota or error page saved instead of the "
                    "file?), not a PyTorch file")
    text = str(error).strip()
    if "weights_only" in text or "Unsupported global" in text or "Weights only load" in text:
        return (f"{type(error).__name__}: it holds Python objects other than tensors and plain "
                "values, or is not a PyTorch file at all")
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (bad input, exit code 2): ``kind`` is ``damaged``
    (a patchguard checkpoint whose contents are broken) or ``foreign`` (some other file)."""

    def __init__(self, path: str | Path, kind: str, problem: str, fix: str) -> None:
        self.path, self.kind, self.problem = Path(path), kind, problem
        what = "is damaged" if kind == "damaged" else "is not a patchguard checkpoint"
        super().__init__(f"checkpoint {path} {what}: {problem}; {fix}")


_DAMAGED_FIX = "use another checkpoint (an epoch_*.pt of the same run, or a fresh training)"


def damaged(path: str | Path, problem: str) -> CheckpointError:
    """The error for a patchguard checkpoint whose contents are broken."""
    return CheckpointError(path, "damaged", problem, _DAMAGED_FIX)


def _check_contents(path: Path, payload: dict[str, Any]) -> None:
    """Entries of the right types, and finite weights (NaN scores otherwise, silently)."""
    config, weights = payload["config"], payload["model"]
    if not isinstance(config, dict):
        raise damaged(path, f"its config is a {type(config).__name__}, not a mapping of "
                            "settings")
    if not isinstance(weights, dict) or not weights:
        raise damaged(path, f"its model entry is a {type(weights).__name__}, not a non-empty "
                            "mapping of weights")
    for name, tensor in weights.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise damaged(path, f"its model entry {name!r} is a {type(tensor).__name__}, not "
                                "a tensor")
    bad = [(name, tensor) for name, tensor in weights.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        name, tensor = bad[0]
        count = int((~torch.isfinite(tensor)).sum())
        more = f" (and {len(bad) - 1} more weight(s))" if len(bad) > 1 else ""
        raise damaged(path, f"weight {name} holds {count} NaN or infinite value(s){more}; "
                            "the model would score every image NaN")


def check_weights(path: str | Path, weights: dict[str, torch.Tensor],
                  expected: dict[str, torch.Tensor]) -> None:
    """Refuse stored weights that do not fit the network its config builds (missing, extra,
    wrong shape): a damaged file, named with the first weights that are wrong."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    def fits(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
        # A 0-sized dimension is a placeholder the checkpoint fills (a kNN memory bank).
        return len(got) == len(want) and all(w in (0, g) for g, w in zip(got, want))

    shapes = [(name, tuple(weights[name].shape), tuple(expected[name].shape))
              for name in expected if name in weights
              and not fits(tuple(weights[name].shape), tuple(expected[name].shape))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) missing ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
    if extra:
        problems.append(f"{len(extra)} unexpected weight(s) ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''})")
    for name, got, want in shapes[:3]:
        problems.append(f"weight {name} has shape {list(got)}, its config builds {list(want)}")
    if problems:
        raise damaged(path, "; ".join(problems) + " for the network its config describes")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check what it holds.

    Refused with :class:`CheckpointError`: a file that needs unpickling code, a file that is not
    a patchguard checkpoint (``foreign``), and a patchguard checkpoint whose config is not a
    mapping, whose weights are not tensors or hold NaN/inf (``damaged``). Whether the weights
    fit the network is checked where the network is built (:func:`check_weights`).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the file, e.g. "
                                f"{path / 'last.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            path, "foreign", f"cannot be loaded safely ({load_failure(error, path)})",
            "it is truncated, not a checkpoint, or holds arbitrary Python objects, which "
            "could run code: never load it with torch's safety check switched off") from error
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(
            path, "foreign", "no 'model'/'config' entries",
            "original PatchGuard state dicts need converting first (patchguard "
            "import-checkpoint)")
    _check_contents(path, payload)
    return payload
