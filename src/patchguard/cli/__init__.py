"""Command-line interface: ``patchguard VERB ...``; one module per verb group.

``args`` holds the shared flag helpers; ``train``, ``evaluate`` (test, visualize), ``benchmark``,
``tools`` (predict, calibrate, import-checkpoint, export, info), ``data`` and ``demo`` each
register their verbs and map them to functions in ``COMMANDS``. Heavy modules are imported
inside the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

from ..version import __version__
from . import benchmark, data, demo, evaluate, tools, train

logger = logging.getLogger("patchguard")

_VERB_MODULES = (train, evaluate, benchmark, demo, tools, data)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    verb: command for module in _VERB_MODULES for verb, command in module.COMMANDS.items()
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="patchguard",
        description="Adversarially robust anomaly detection and localization (PatchGuard).",
    )
    parser.add_argument("--version", action="version", version=f"patchguard {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in _VERB_MODULES:
        module.register(verbs)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then re-parse with a YAML config's values as defaults (explicit flags still win)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from ..config import load_yaml

        values = load_yaml(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.verb]  # noqa: SLF001
        known = {action.dest for action in sub._actions}  # noqa: SLF001
        unknown = sorted(set(values) - known - {"preset"} - _train_only_keys(args.verb))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) for '{args.verb}': {unknown}")
        sub.set_defaults(**{k: v for k, v in values.items() if k in known})
        args = parser.parse_args(argv)
        args.yaml_extra = {k: v for k, v in values.items() if k not in known}
    return args


def _train_only_keys(verb: str) -> set[str]:
    """Config keys settable from YAML for train that have no CLI flag (advanced settings)."""
    if verb not in ("train", "benchmark"):
        return set()
    from ..config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchguard`` command; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="patchguard: %(message)s")
    logging.getLogger("timm").setLevel(logging.WARNING)  # its INFO lines repeat ours
    from ..data.records import DatasetError

    try:
        args = parse_args(argv)
        return COMMANDS[args.verb](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (DatasetError, ValueError, ImportError, ArithmeticError, OSError) as error:
        # OSError covers missing files and unwritable output folders alike.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            print("error: the GPU ran out of memory; lower --batch-size or add --bf16",
                  file=sys.stderr)
            return 2
        if type(error).__name__ == "BackboneWeightsError":
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
