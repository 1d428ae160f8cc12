"""The public Python API: train a class, evaluate a checkpoint, evaluate any detector under the
attacks, fine-tune a robust backbone."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .adversarial.settings import AttackSettings
from .config import TrainConfig, build_config
from .data.datasets import TensorTestSet
from .evaluation.any_detector import DetectorEvaluation, evaluate_detector
from .evaluation.evaluator import evaluate, load_for_evaluation
from .evaluation.report.tables import format_table, write_results
from .training.robustify import RobustifyResult, RobustifySettings, robustify
from .training.trainer import train as _train
from .utils import checks
from .utils.device import resolve_device

__all__ = ["AttackSettings", "DetectorEvaluation", "RobustifyResult", "RobustifySettings",
           "TensorTestSet", "evaluate_checkpoint", "evaluate_detector", "robustify", "train"]


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
        **overrides: settings of ``TrainConfig`` by name (for example ``dataset_dir``,
            ``class_name``, ``epochs``, ``output_dir``; docs/options.md lists them all), plus
            ``preset``; with ``config`` given they replace its fields.

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
    *,
    settings: AttackSettings | None = None,
    device: str = "auto",
    json_path: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Evaluate a checkpoint clean and under attack; data set and class default to the
    training's.

    Every argument is checked before the checkpoint is loaded. Any other detector:
    :func:`evaluate_detector`.

    Args:
        checkpoint: a ``.pt`` written by :func:`train` (or an imported one).
        dataset_dir: the data set's root (default: the one the checkpoint was trained on).
        class_name: the class to test (default: the training's).
        dataset: the layout (``mvtec``, ``visa``, ``folder``, ...; default: the training's).
        settings: the attacks, epsilons (1/255 units, 0 is the clean row), budgets, seed and
            batching as one :class:`~patchguard.adversarial.settings.AttackSettings`
            (default: the paper's PGD-10 at 8/255); its fields may also be given as keywords
            (``epsilons``, ``steps``, ``batch_size``, ``attacks``, ``objective``,
            ``queries``, ...). Quote ``standard`` (or at least ``objective="score"``) as
            robustness, never the paper's PGD alone.
        device: ``auto``, ``cpu``, ``cuda``, ...
        json_path: where to write the rows as JSON (optional).
        progress: progress bars, and the table printed at the end.
        **options: fields of ``AttackSettings`` by name, replacing those of ``settings``.

    Returns:
        One dict per attack and epsilon, the clean row first, as ``patchguard test`` writes
            them: ``image_auroc``, ``pixel_auroc``, AP, F1-max, AUPRO, the attack's settings
            and its cost.

    Example:
        ```python
        rows = patchguard.evaluate_checkpoint("runs/bottle/last.pt", epsilons=(0, 2, 8),
                                              attacks=("pgd", "standard"))
        print([(r["attack"], r["epsilon"], r["image_auroc"]) for r in rows])
        ```
    """
    settings = AttackSettings.build(settings, **options)
    for eps in settings.epsilons:  # as the command line warns about --epsilon-test 0.5
        note = checks.epsilon_units_note("epsilons", eps)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
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
