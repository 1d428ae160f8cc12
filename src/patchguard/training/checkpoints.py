"""Training checkpoints: everything needed to resume a run exactly (model, optimiser, scheduler,
RNG states, epoch, config), the resumed run's config, and the log kept in step with it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..models.patchguard import PatchGuard
from ..utils.checkpoint import load_checkpoint
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
