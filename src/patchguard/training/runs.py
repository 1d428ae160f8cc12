"""Run folders and the checks before a training run starts.

:func:`prepare_run` is what :func:`patchguard.training.trainer.train` does first: every value of
the config against its domain, the network built on PyTorch's meta device (block numbers, patch
size and discriminator heads checked without allocating a weight), the device, the data set's
layout and files, and the output folder: a folder that holds a run is refused unless the run is
resumed or ``overwrite`` is given. Only when all of that passed are an overwritten run's files
and stale temporary files removed; until then nothing is written, truncated or deleted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data.layouts import default_class_name, get_layout, load_records
from ..models.factory import model_class
from ..utils.checks import InputError, epsilon_units_note
from ..utils.device import resolve_device
from ..utils.files import lock_folder, refuse_inside, remove_stale_temp_files, unlock_folder

logger = logging.getLogger(__name__)

# What a training run (and `patchguard test` with its default report name) writes into its
# folder; --overwrite removes these and nothing else.
RUN_FILES = ("last.pt", "epoch_*.pt", "*.results.json", "train_log.jsonl", "train_curves.png",
             "results.json", "results.csv", "results.md", "results_vs_epsilon.png")


def run_files(folder: str | Path) -> list[Path]:
    """The files of a training run (and its test reports) in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in RUN_FILES for p in folder.glob(pattern) if p.is_file()})


def describe_run(folder: str | Path) -> str | None:
    """A short description of the run a folder holds, or None when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    parts = []
    if (folder / "last.pt").is_file():
        parts.append("last.pt")
    epochs = sorted(folder.glob("epoch_*.pt"))
    if epochs:
        parts.append(f"{len(epochs)} epoch_*.pt")
    log = folder / "train_log.jsonl"
    if log.is_file() and log.stat().st_size:
        lines = sum(1 for line in log.read_text(errors="replace").splitlines() if line.strip())
        parts.append(f"train_log.jsonl with {lines} epoch(s)")
    return ", ".join(parts) or None


def has_checkpoint(folder: str | Path) -> bool:
    """Whether a run folder holds a checkpoint to continue from (last.pt or an epoch_*.pt)."""
    folder = Path(folder)
    return (folder / "last.pt").is_file() or any(folder.glob("epoch_*.pt"))


def check_output_dir(config: TrainConfig, resume: str | Path | None, overwrite: bool,
                     note: bool = False) -> bool:
    """Refuse an output folder that is a file, inside the data set, or that holds a run nobody
    asked to replace; True when it holds a run that stopped before its first checkpoint (a
    full disk, a crash), which a rerun replaces: nothing of it can be continued."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output_dir (--output-dir)", config.output_dir, "is a file",
                         "give a folder")
    refuse_inside(out, "output_dir (--output-dir)", [("data set folder", config.dataset_dir)])
    held = describe_run(out)
    if held is None:
        return False
    if not has_checkpoint(out) and not (resume is not None and Path(resume).is_file()):
        if note:
            logger.warning("%s holds a run that stopped before its first checkpoint (%s): "
                           "starting it afresh", out, held)
        return True
    continuing = resume is not None and Path(resume).resolve().parent == out.resolve()
    if continuing:
        if overwrite:
            raise InputError("--overwrite", True, f"would delete the run that --resume "
                             f"continues ({out})", "give one of --resume and --overwrite")
        return
    if not overwrite:
        raise InputError(
            "output_dir (--output-dir)", config.output_dir,
            f"already holds a training run ({held})",
            "add --resume to continue it, --overwrite to replace it (its checkpoints, log and "
            "results are removed), or choose another --output-dir")
    return False


def clear_run(folder: str | Path) -> list[Path]:
    """Remove a run's files (:data:`RUN_FILES`) for ``--overwrite``; return what was removed."""
    removed = run_files(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        logger.info("--overwrite: removed %d file(s) of the previous run in %s: %s",
                    len(removed), folder, ", ".join(p.name for p in removed[:8])
                    + (" ..." if len(removed) > 8 else ""))
    return removed


def check_architecture(config: TrainConfig) -> None:
    """Build the network on the meta device: its own checks run, no weight is allocated."""
    with torch.device("meta"):
        model = model_class(config).from_config(config)
    patches = model.grid_size ** 2
    if config.top_k > patches:
        logger.warning("top_k = %d is more than the %d patches of a %d px image: the image "
                       "score is the mean of all patches", config.top_k, patches,
                       config.image_size)


def _check_data(config: TrainConfig) -> int:
    """The training split's layout and files (the same check training does); its image count."""
    get_layout(config.dataset)
    if not config.dataset_dir:
        raise InputError("dataset_dir (--dataset-dir)", config.dataset_dir, "is not set",
                         "give the data set's root folder (or a --config holding it)")
    if not config.class_name:
        from ..data.layouts import discover_classes

        found = discover_classes(config.dataset_dir)
        raise InputError("class_name (--class-name)", config.class_name, "is not set",
                         f"give one of the classes in {config.dataset_dir}: "
                         f"{', '.join(found) or 'none found'}")
    return len(load_records(config.dataset, config.dataset_dir, config.class_name, "train"))


def _warn_about_recipe(config: TrainConfig, n_images: int) -> None:
    """Values inside their domain that are still probably not what was meant."""
    from ..inference.thresholds import few_normals_note

    if config.backbone_weights and not config.pretrained:
        logger.warning("--backbone-weights %s is ignored: --no-pretrained (pretrained: false) "
                       "trains from random initialisation", config.backbone_weights)
    units = epsilon_units_note("--epsilon-train", config.epsilon_train)
    if config.adv_train and units:
        logger.warning(units)
    if config.adv_train and config.epsilon_train == 0:
        logger.warning("--epsilon-train 0 with adversarial training on: the attacked views "
                       "equal the clean ones (twice the cost); --no-adv-train switches it off")
    cpus = os.cpu_count() or 1
    if config.workers > cpus:
        logger.warning("--workers %d is more than this machine's %d CPU(s): the loader "
                       "processes will only compete", config.workers, cpus)
    if config.warmup_epochs >= config.epochs:
        logger.warning("--warmup-epochs %d >= --epochs %d: the run ends inside the warm-up, the "
                       "learning rate never reaches --lr", config.warmup_epochs, config.epochs)
    if config.val_fraction > 0:
        held = max(1, round(n_images * config.val_fraction))
        if held >= n_images:
            raise InputError("val_fraction (--val-fraction)", config.val_fraction,
                             f"holds out all {n_images} training images",
                             "lower it (0 trains on every image)")
        if n_images - held == 1:
            logger.warning("--val-fraction %g leaves 1 training image", config.val_fraction)
        note = few_normals_note(held, config.target_fpr)
        if note:
            logger.warning("--val-fraction %g holds out %s", config.val_fraction, note)


def prepare_run(config: TrainConfig, state: dict[str, Any] | None, resume: str | Path | None,
                overwrite: bool = False) -> TrainConfig:
    """Check everything a run needs, then clear what it replaces; return the config to use.

    A single-class data set (``headct``, ``brats2021``, ``folder`` with one class) without a
    class name gets it from ``dataset_dir``.
    """
    if not config.class_name and config.dataset_dir:
        name = default_class_name(config.dataset, config.dataset_dir)
        if name:
            config = TrainConfig.from_dict({**config.to_dict(), "class_name": name})
    config.validate()
    resolve_device(config.device)
    check_architecture(config)
    weights = config.backbone_weights
    if config.pretrained and weights and state is None and not Path(weights).expanduser().is_file():
        raise InputError("backbone_weights (--backbone-weights)", weights, "no such file",
                         "give a local .safetensors or .pth file")
    n_images = _check_data(config)
    config = _resolved_dataset_dir(config)
    _warn_about_recipe(config, n_images)
    check_output_dir(config, resume, overwrite)
    if state is not None and int(state["epoch"]) >= config.epochs:
        logger.info("%s already holds %d epoch(s), --epochs is %d: nothing to train",
                    resume, int(state["epoch"]), config.epochs)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun one process writes
        # Locked until the run ends (release_run_folder); checked again under the lock, since a
        # run that started meanwhile may have written to it.
        lock_folder(config.output_dir, "output_dir (--output-dir)")
        try:
            unfinished = check_output_dir(config, resume, overwrite, note=True)
            if overwrite or unfinished:  # never the folder --resume continues (refused above)
                clear_run(config.output_dir)
            remove_stale_temp_files(config.output_dir)
        except BaseException:
            unlock_folder(config.output_dir)
            raise
    return config


def release_run_folder(config: TrainConfig) -> None:
    """Release the lock :func:`prepare_run` took on the run folder."""
    unlock_folder(config.output_dir)


def _resolved_dataset_dir(config: TrainConfig) -> TrainConfig:
    """The data set folder as an absolute path, as checkpoints store it: a relative one would
    mean another folder when the checkpoint is tested from elsewhere."""
    given = Path(config.dataset_dir).expanduser()
    if given.is_absolute():
        return config
    resolved = given.resolve()
    logger.info("dataset_dir %s is stored as %s (resolved from %s)", config.dataset_dir,
                resolved, Path.cwd())
    return TrainConfig.from_dict({**config.to_dict(), "dataset_dir": str(resolved)})

