"""High-level Python API: train a class, evaluate a checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import TrainConfig, build_config
from .evaluation.evaluator import evaluate, load_for_evaluation
from .evaluation.reports import format_table, write_results
from .training.trainer import train as _train
from .utils import checks
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
    ``overwrite`` replaces it.

    Args:
        config: every setting of the run; when None, one is built from ``preset`` (default
            ``"paper"``) and ``overrides``.
        resume: a checkpoint (or a run folder, meaning its ``last.pt``) to continue exactly.
        progress: show progress bars and per-epoch lines.
        overwrite: replace a run already in ``output_dir`` (after every input is checked).
        loggers: experiment trackers to log each epoch to: ``tensorboard``, ``mlflow``,
            ``csv``.
        log_dir: where the trackers write (default ``output_dir/logs``).
        **overrides: settings of ``TrainConfig`` by name (for example
            ``dataset_dir``, ``class_name``, ``epochs``, ``output_dir``), plus ``preset``; with
            ``config`` given they replace its fields.

    Returns:
        The path of the run's ``last.pt`` (model, optimiser and scheduler state, config,
            thresholds when images were held out).

    Example:
        ```python
        import patchguard

        last = patchguard.train(dataset_dir="data/mvtec", class_name="bottle",
                                preset="fast", output_dir="runs/bottle", epochs=20)
        ```
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
    """Evaluate a checkpoint clean and under ``attacks``; data set and class default to the
    training's.

    Every argument is checked before the checkpoint is loaded. Any other detector:
    :func:`patchguard.robustness.evaluate_detector`.

    Args:
        checkpoint: a patchguard checkpoint (``last.pt``).
        dataset_dir: the data set's root (default: the one the checkpoint was trained on).
        class_name: the class to test (default: the training's).
        dataset: the layout (``mvtec``, ``visa``, ``folder``, ...; default: the training's).
        epsilons: L-infinity budgets in 1/255 units (0 to 255); 0 is the clean row.
        steps: iterations of the gradient attacks.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        json_path: also write the rows there as JSON.
        progress: show progress bars and print the result table.
        attacks: attack names, e.g. ``("pgd", "standard")``; the default is the paper's PGD.
            Quote ``standard`` (or at least ``objective="score"``) as robustness.
        objective: what the gradient attacks ascend: ``mask`` (the paper's), ``score`` (the
            image decision) or ``map`` (the localisation).
        queries: the query budget of ``square`` (default 1000).

    Returns:
        One dict per attack and epsilon (the clean row first) with ``image_auroc``,
            ``pixel_auroc``, AP, F1-max, AUPRO, the attack's settings and its cost; the rows of
            ``patchguard test``.

    Example:
        ```python
        rows = patchguard.evaluate_checkpoint("runs/bottle/last.pt", epsilons=(0, 2, 8),
                                              attacks=("pgd", "standard"))
        print([(r["attack"], r["epsilon"], r["image_auroc"]) for r in rows])
        ```
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
