"""Experiment trackers for ``--logger tensorboard|mlflow|csv`` (train and test).

Training logs, once per epoch, what ``train_log.jsonl`` holds (the losses of every view, the
learning rate, images/s, seconds) under ``train/``; a test logs every result row under
``test/`` as ``test/METRIC/ATTACK_epsEPS`` at the checkpoint's epoch, so that evaluations of
successive checkpoints line up, plus the table as text. The JSON lines and result files are
written as before; a tracker is only another copy.

TensorBoard (``torch.utils.tensorboard``, package ``tensorboard``) and MLflow are optional
extras, imported when asked for; ``csv`` needs nothing (``metrics.csv``: step, tag, value,
wall time; ``results.csv``: the rows). A tracker that fails while a run is going (full disk, a
tracking server gone) is reported once and dropped: it never ends a training run.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .utils.files import atomic_write_text

logger = logging.getLogger("patchguard")

LOGGERS = ("tensorboard", "mlflow", "csv")
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max",
           "pixel_f1_max")


def check_loggers(names: Iterable[str]) -> list[str]:
    """The names, checked before any work: known, and their optional package installed."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"--logger {name}: choose from {', '.join(LOGGERS)}")
        if name in _PACKAGES:
            module, extra = _PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(
                    f"--logger {name} needs the {module} package: pip install "
                    f"'patchguard[{extra}]' (or pip install {module})")
    return names


def result_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each row's finite metrics as ``test/METRIC/ATTACK[_OBJECTIVE]_epsEPS`` scalars."""
    out = {}
    for row in rows:
        setting = str(row.get("attack"))
        if setting != "clean":
            if row.get("objective") not in (None, "mask"):
                setting += f"_{row['objective']}"
            setting += f"_eps{float(row.get('epsilon') or 0):g}"
        for metric in METRICS:
            value = row.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"test/{metric}/{setting}"] = float(value)
    return out


class Tracker:
    """One backend; subclasses write scalars, text and parameters."""

    name = "base"

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log scalars at a step."""

    def text(self, tag: str, value: str, step: int) -> None:
        """Log a text (a Markdown table)."""

    def params(self, values: dict[str, Any]) -> None:
        """Log the run's settings once."""

    def results(self, rows: Sequence[dict[str, Any]], step: int) -> None:
        """Log result rows (scalars plus the table)."""
        from .evaluation.report.tables import markdown_table

        self.scalars(result_metrics(rows), step)
        self.text("test/results", markdown_table(list(rows)), step)

    def close(self) -> None:
        """Flush and close."""


class CsvTracker(Tracker):
    """``metrics.csv`` (step, tag, value, wall_time) and ``results.csv`` in one folder."""

    name = "csv"

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.csv"
        kept = []
        if self.path.exists():  # a resumed run drops the epochs it trains again
            for row in csv.DictReader(io.StringIO(self.path.read_text())):
                try:
                    step = int(row["step"])
                except (KeyError, TypeError, ValueError):
                    continue
                if purge_step is None or step < purge_step:
                    kept.append(row)
        self._write_all(kept)

    def _write_all(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["step", "tag", "value", "wall_time"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Append one line per scalar."""
        now = time.time()
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for tag, value in values.items():
                writer.writerow([step, tag, repr(float(value)), f"{now:.3f}"])

    def results(self, rows: Sequence[dict[str, Any]], step: int) -> None:
        """The scalars, and the rows as ``results.csv``."""
        from .evaluation.report.tables import write_csv

        self.scalars(result_metrics(rows), step)
        write_csv(rows, self.folder / "results.csv")


class TensorBoardTracker(Tracker):
    """Event files through ``torch.utils.tensorboard.SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events of epochs a resumed run trains again.
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar summary per value."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, value: str, step: int) -> None:
        """A text summary (TensorBoard renders Markdown)."""
        self.writer.add_text(tag, value, step)
        self.writer.flush()

    def params(self, values: dict[str, Any]) -> None:
        """The settings as a two-column Markdown table."""
        lines = ["| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in values.items()]
        self.text("config", "\n".join(lines), 0)

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


class MlflowTracker(Tracker):
    """An MLflow run: at ``MLFLOW_TRACKING_URI`` when set, else in the folder: a SQLite store
    (``mlflow.db``) when SQLAlchemy is installed (full ``mlflow``), a file store otherwise
    (``mlflow-skinny``); artifacts in ``artifacts/``."""

    name = "mlflow"

    def __init__(self, folder: Path, run_name: str, experiment: str = "patchguard") -> None:
        import os

        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            folder = Path(folder).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            if all(importlib.util.find_spec(m) for m in ("sqlalchemy", "alembic")):
                mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
            else:
                # MLflow 3 keeps the file store only on request; it is what mlflow-skinny has.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri(folder.as_uri())
            if mlflow.get_experiment_by_name(experiment) is None:
                # Without a location MLflow puts artifacts under the working directory.
                mlflow.create_experiment(experiment, (folder / "artifacts").as_uri())
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        self.tracking_uri = mlflow.get_tracking_uri()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """MLflow metric keys allow '/', so the tags stay as they are."""
        self.mlflow.log_metrics(values, step=step)

    def text(self, tag: str, value: str, step: int) -> None:
        """A text artifact."""
        self.mlflow.log_text(value, f"{tag.replace('/', '_')}_{step}.md")

    def params(self, values: dict[str, Any]) -> None:
        """Settings as parameters (MLflow stores them as strings)."""
        self.mlflow.log_params({k: str(v)[:500] for k, v in values.items()})

    def close(self) -> None:
        """End the run."""
        self.mlflow.end_run()


class Trackers:
    """The trackers of one run; each call goes to all, a failing one is dropped with a
    warning."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # a tracker is a copy: the run goes on without it
                logger.warning("--logger %s failed (%s: %s); going on without it",
                               tracker.name, type(error).__name__, error)
                self.trackers.remove(tracker)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log scalars at a step to every tracker."""
        self._each("scalars", values, step)

    def text(self, tag: str, value: str, step: int) -> None:
        """Log a text to every tracker."""
        self._each("text", tag, value, step)

    def params(self, values: dict[str, Any]) -> None:
        """Log the settings to every tracker."""
        self._each("params", values)

    def results(self, rows: Sequence[dict[str, Any]], step: int) -> None:
        """Log result rows to every tracker."""
        self._each("results", rows, step)

    def close(self) -> None:
        """Close every tracker."""
        self._each("close")
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_trackers(names: Iterable[str], log_dir: str | Path, run_name: str,
                  purge_step: int | None = None) -> Trackers:
    """Open the named trackers under ``log_dir/<name>/<run_name>`` (mlflow: one file store in
    ``log_dir/mlflow``, one run per call)."""
    names = check_loggers(names)
    log_dir = Path(log_dir)
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "csv":
                opened.append(CsvTracker(log_dir / "csv" / run_name, purge_step))
            elif name == "tensorboard":
                opened.append(TensorBoardTracker(log_dir / "tensorboard" / run_name, purge_step))
            else:
                opened.append(MlflowTracker(log_dir / "mlflow", run_name))
    except BaseException:
        Trackers(opened).close()
        raise
    return Trackers(opened)
