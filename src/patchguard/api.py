"""High-level Python API: train a class, evaluate a checkpoint, fine-tune a robust backbone."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import TrainConfig, build_config
from .evaluation.evaluator import evaluate, load_for_evaluation
from .evaluation.reports import format_table, write_results
from .training.robustify import RobustifyResult, RobustifySettings, robustify
from .training.trainer import train as _train
from .utils import checks
from .utils.device import resolve_device

__all__ = ["RobustifyResult", "RobustifySettings", "evaluate_checkpoint", "robustify", "train"]


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    loggers: Sequence[str] = (),
    log_dir: str | Path | None = None,
    **overrides: Any,
) -> Path:
    """Train one class and return the path of its ``last.pt``.

    Every argument is checked against its domain first (InputError, a ValueError, naming it).
    An ``output_dir`` that already holds a run is refused unless ``resume`` continues it or
    ``overwrite`` replaces it. ``loggers`` (``tensorboard``, ``mlflow``, ``csv``) also log each
    epoch to ``log_dir`` (default ``output_dir/logs``). Example:
    ``patchguard.train(dataset_dir="mvtec", class_name="bottle", preset="fast")``.
    """
    if config is None:
        config = build_config(overrides.pop("preset", "paper"), overrides=overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return _train(config, resume=resume, progress=progress, overwrite=overwrite,
                  loggers=loggers, log_dir=log_dir)


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset_dir: str | Path | None = None,
    class_name: str | None = None,
    dataset: str | None = None,
    epsilons: Sequence[float] = (0, 8),
    steps: int = 10,
    batch_size: int = 16,
    device: str = "auto",
    json_path: str | Path | None = None,
    progress: bool = True,
    attacks: Sequence[str] = ("pgd",),
    objective: str = "mask",
    queries: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a checkpoint clean and under ``attacks`` (default the paper's PGD; e.g.
    ``("pgd", "standard")``); data set and class default to the training's.

    Epsilons are in 1/255 units (0..255, 0 is the clean row); every argument is checked before
    the checkpoint is loaded. Any other detector: :func:`patchguard.robustness.evaluate_detector`.
    """
    epsilons = [checks.epsilon("epsilons", eps) for eps in epsilons]
    checks.integer("steps", steps, 1)
    checks.integer("batch_size", batch_size, 1)
    target = load_for_evaluation(checkpoint, dataset, dataset_dir, class_name,
                                 resolve_device(device))
    rows = evaluate(target.model, target.test_set, epsilons, steps, batch_size, target.device,
                    progress=progress, attacks=attacks, objective=objective, queries=queries)
    if json_path is not None:
        write_results(json_path, rows, {"dataset": target.dataset,
                                        "class_name": target.class_name,
                                        "checkpoint": str(checkpoint)})
    if progress:
        print(format_table(rows))
    return rows
