"""High-level Python API: train a class, evaluate a checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .adversarial.settings import AttackSettings
from .config import TrainConfig, build_config
from .evaluation.evaluator import evaluate, load_for_evaluation
from .evaluation.reports import format_table, write_results
from .training.trainer import train as _train
from .utils.device import resolve_device


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
    *,
    settings: AttackSettings | None = None,
    device: str = "auto",
    json_path: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Evaluate a checkpoint clean and under attack; data set and class default to the
    training's.

    Args:
        checkpoint: a ``.pt`` written by :func:`train` (or an imported one).
        dataset_dir, class_name, dataset: the test data (default: the training's).
        settings: the attacks, epsilons (1/255 units, 0 is the clean row), budgets, seed and
            batching as one :class:`~patchguard.adversarial.settings.AttackSettings`
            (default: the paper's PGD-10 at 8/255); its fields may also be given as keywords
            (``epsilons``, ``steps``, ``batch_size``, ``attacks``, ``objective``,
            ``queries``, ...).
        device: ``auto``, ``cpu``, ``cuda``, ...
        json_path: where to write the rows as JSON (optional).
        progress: progress bars, and the table printed at the end.

    Returns:
        One row per attack and epsilon, clean first.

    Example:
        ``evaluate_checkpoint("runs/bottle/last.pt", epsilons=(0, 2, 8),
        attacks=("pgd", "standard"))``

    Every argument is checked before the checkpoint is loaded. Any other detector:
    :func:`patchguard.robustness.evaluate_detector`.
    """
    settings = AttackSettings.build(settings, **options)
    target = load_for_evaluation(checkpoint, dataset, dataset_dir, class_name,
                                 resolve_device(device))
    rows = evaluate(target.model, target.test_set, settings, device=target.device,
                    progress=progress)
    if json_path is not None:
        write_results(json_path, rows, {"dataset": target.dataset,
                                        "class_name": target.class_name,
                                        "checkpoint": str(checkpoint)})
    if progress:
        print(format_table(rows))
    return rows
