"""A training run's state in its checkpoints: everything needed to resume a run exactly (model,
optimiser, scheduler, RNG states, epoch, config), when last.pt is written, the resumed run's
config, and the log kept in step with it. (Reading and writing the files themselves, for any
checkpoint, is :mod:`patchguard.utils.checkpoint`.)
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..models.patchguard import PatchGuard
from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.checks import InputError
from ..utils.files import atomic_write_text
from ..version import __version__

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The torch, Python and CUDA random states, for an exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states of :func:`rng_state` (CUDA only when the GPU count matches)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has RNG states for %d GPUs, this machine has %d: dropout "
                           "draws will differ from an uninterrupted run", len(cuda_states),
                           torch.cuda.device_count())


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def snapshot(value: Any) -> Any:
    """A copy of a checkpoint payload that later training steps cannot change.

    Tensors are cloned on their own device (on a GPU that takes about a millisecond for ViT-S
    with AdamW; on a CPU about 0.1 s), containers are rebuilt, other values are shared.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class CheckpointPolicy:
    """When ``last.pt`` is written: on a time and epoch policy, not after every epoch.

    At the end of each epoch :meth:`epoch_done` writes when ``every_min`` minutes have passed
    since the last write (0: every epoch), at the final epoch, and together with a periodic
    ``epoch_NNNN.pt``; otherwise it keeps a snapshot of the epoch in memory, which
    :meth:`flush` writes on Ctrl-C or an error, so ``last.pt`` then holds the last completed
    epoch. Only a hard kill (kill -9, power loss) loses the epochs since the last write, at
    most ``every_min`` minutes of training.
    """

    def __init__(self, path: str | Path, every_min: float, saved_epoch: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.every_s = 60.0 * every_min
        self.clock = clock
        self.last_write = clock()
        self.pending: dict[str, Any] | None = None
        self.saved_epoch = saved_epoch  # the epoch count the file holds (None: no file yet)
        self.writes = 0

    def _written(self, payload: dict[str, Any]) -> None:
        self.last_write = self.clock()
        self.saved_epoch = int(payload["epoch"])
        self.writes += 1

    def epoch_done(self, payload: dict[str, Any], final: bool = False,
                   periodic: Path | None = None) -> bool:
        """Write ``payload`` (and ``periodic``) if due, else keep a snapshot; True if written."""
        due = (final or periodic is not None or self.every_s <= 0
               or self.clock() - self.last_write >= self.every_s)
        if not due:
            self.pending = snapshot(payload)
            return False
        self.pending = None
        if periodic is not None:
            save_checkpoint(periodic, payload)
            link_or_copy(periodic, self.path, payload)
        else:
            save_checkpoint(self.path, payload)
        self._written(payload)
        return True

    def flush(self) -> int | None:
        """Write the snapshot not yet on disk, if any; return the epoch it holds."""
        if self.pending is None:
            return None
        payload, self.pending = self.pending, None
        save_checkpoint(self.path, payload)
        self._written(payload)
        return self.saved_epoch


def link_or_copy(source: Path, target: Path, payload: dict[str, Any]) -> None:
    """Make ``target`` the same file as ``source`` (a hard link renamed into place, atomic), or
    save ``payload`` there where the file system has no hard links.

    Every checkpoint write replaces its file by a rename, so the two names never change
    each other's contents afterwards.
    """
    # Named like atomic_write_bytes' temporary files, so a stale one is cleaned up the same way.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)
        save_checkpoint(target, payload)


def checkpoint_payload(
    model: PatchGuard,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    epoch: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Everything needed to evaluate the model or resume training exactly."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,  # epochs completed
        "config": config.to_dict(),
        "patchguard_version": __version__,
        **extra,
    }


# Keys that fix the shape of the weights: a resumed run keeps them.
FIXED_ON_RESUME = ("backbone", "image_size", "feature_layers", "dsc_layers", "dsc_hidden",
                   "dsc_heads")


def check_resumable(state: dict[str, Any], checkpoint: str | Path) -> None:
    """Refuse a checkpoint that holds no training state (an imported one, for example)."""
    missing = [key for key in ("optimizer", "scheduler", "rng", "epoch")
               if state.get(key) is None]
    if missing:
        origin = state.get("imported_from")
        what = f"it was imported from {origin}" if origin else "it holds no training state"
        raise InputError(
            "--resume", str(checkpoint),
            f"cannot be resumed: {what} (no {', '.join(missing)})",
            "--resume continues a patchguard training run; evaluate this model with "
            "'patchguard test', or train a new run")


def resume_config(checkpoint: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config saved in a checkpoint, with the given keys changed (each change is logged).

    Keys that shape the weights (:data:`FIXED_ON_RESUME`) cannot change: InputError naming
    the flag, the run's value and the way out.
    """
    state = load_checkpoint(checkpoint)
    check_resumable(state, checkpoint)
    saved = TrainConfig.from_dict(state["config"], source=str(checkpoint))
    values = saved.to_dict()
    for key, value in (overrides or {}).items():
        if key in FIXED_ON_RESUME and key in values and _differs(values[key], value):
            flag = "--" + key.replace("_", "-")
            raise InputError(
                f"{key} ({flag})", value,
                f"cannot change on --resume: the run in {checkpoint} uses {values[key]!r}",
                "resume without it, or start a new run in another --output-dir")
        if key in values and values[key] != value:
            logger.info("resume: %s changed from %r to %r", key, values[key], value)
        values[key] = value
    return TrainConfig.from_dict(values)


def _differs(saved: Any, given: Any) -> bool:
    if isinstance(saved, list) and isinstance(given, (list, tuple)):
        return list(saved) != list(given)
    return saved != given


def reset_log(log_path: Path, completed_epochs: int) -> None:
    """Keep only the log lines of epochs the checkpoint holds (none on a fresh run)."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("epoch", 0) <= completed_epochs:
            kept.append(line)
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))
