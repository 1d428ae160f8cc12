"""Argument helpers shared by every verb: flags with the original's underscore spellings, the
data-set and common flags, and the argparse types that check each value's domain (from
:mod:`patchguard.utils.checks`, the one place where domains are written down) before any work
starts. The evaluation's attack flags are derived from their fields in
:mod:`patchguard.cli.attack_settings`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..utils.checks import (
    DEVICE_ARG,
    EPSILON_ARG,
    FINITE_ARG,
    FPR_ARG,
    NAME_ARG,
    WORKERS_ARG,
    at_least,
)

__all__ = ["DEVICE_ARG", "EPSILON_ARG", "FINITE_ARG", "FPR_ARG", "NAME_ARG", "POSITIVE",
           "NON_NEGATIVE", "at_least", "common_flags", "data_flags", "flag",
           "logger_flags"]

POSITIVE = at_least(1)  # batch sizes, steps, restarts, image counts
NON_NEGATIVE = WORKERS_ARG  # loader workers: 0..256


def flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add ``--some-flag`` and the original's ``--some_flag`` spelling as an alias."""
    names = [name]
    if "-" in name[2:]:
        names.append("--" + name[2:].replace("-", "_"))
    parser.add_argument(*names, **kwargs)


def data_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    """--dataset, --dataset-dir and --class-name."""
    flag(parser, "--dataset", default=None, help="data set layout (default: mvtec, or the "
         "checkpoint's)")
    flag(parser, "--dataset-dir", default=None, required=required,
         help="root folder holding one folder per class")
    flag(parser, "--class-name", type=NAME_ARG, default=None, required=required,
         help="class folder name (a single folder name)")


def common_flags(parser: argparse.ArgumentParser) -> None:
    """--config, --device and --quiet."""
    flag(parser, "--config", default=None, help="YAML file of option: value (CLI flags win)")
    flag(parser, "--device", type=DEVICE_ARG, default=None,
         help="auto (default), cpu, cuda, cuda:1, ...")
    flag(parser, "--quiet", action="store_true", default=None, help="no progress bars")


def logger_flags(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """--logger (experiment trackers, optional extras) and --log-dir."""
    from ..tracking import LOGGERS

    flag(parser, "--logger", nargs="+", default=None, choices=LOGGERS,
         help="also log to these trackers (tensorboard and mlflow are optional extras: pip "
              "install 'patchguard[tensorboard]'); the JSON files are written as always")
    flag(parser, "--log-dir", default=None,
         help=f"where the trackers write (default {default_dir}; mlflow: MLFLOW_TRACKING_URI "
              "when set)")
