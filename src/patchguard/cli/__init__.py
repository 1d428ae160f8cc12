"""Command-line interface: ``patchguard VERB ...``; one module per verb group.

``args`` holds the shared flag helpers; ``train``, ``evaluate`` (test, visualize), ``benchmark``,
``report`` (HTML pages), ``tools`` (predict, calibrate, import-checkpoint, export, info),
``data``, ``weights`` (the authors' checkpoints), ``audit`` (a published figure beside
``standard``), ``serve`` (HTTP), ``demo`` and ``robustify`` (robust backbone fine-tuning) each
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
from . import (
    audit,
    benchmark,
    data,
    demo,
    evaluate,
    report,
    robustify,
    serve,
    tools,
    train,
    weights,
)

logger = logging.getLogger("patchguard")

_VERB_MODULES = (train, robustify, evaluate, benchmark, audit, report, demo, tools, data,
                 weights, serve)
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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure (also: PATCHGUARD_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in _VERB_MODULES:
        module.register(verbs)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then re-parse with a YAML config's values as defaults (explicit flags still win).

    A YAML value goes through its flag's type and checks exactly as the flag's text would (a
    list for a flag that takes several values, a real boolean for a switch), so that a config
    file cannot pass what the command line refuses.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from ..config import load_yaml

        values = load_yaml(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.verb]  # noqa: SLF001
        actions = {action.dest: action for action in sub._actions}  # noqa: SLF001
        known = set(actions) - {"help", "config"}
        unknown = sorted(set(values) - known - {"preset"} - _train_only_keys(args.verb))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) for '{args.verb}': {unknown}")
        # A null for a training setting goes to the config as it is (backbone_lr: null is
        # "same as lr", image_size: null is refused there); flags would read it as "not given".
        nulls = {k for k, v in values.items() if v is None and k in _train_only_keys(args.verb)}
        # An empty list is for the config to judge too (reg_layers: [] with reg: false).
        config_keys = _train_only_keys(args.verb)
        sub.set_defaults(**{k: yaml_value(actions[k], k, v, args.config,
                                          allow_empty=k in config_keys)
                            for k, v in values.items() if k in known and k not in nulls})
        args = parser.parse_args(argv)
        extra = {k: v for k, v in values.items() if k not in known or k in nulls}
        if extra:
            from ..config import coerce_yaml_values

            extra = coerce_yaml_values(extra)
        args.yaml_extra = extra
    return args


def yaml_value(action: argparse.Action, key: str, value: object, source: str,
               allow_empty: bool = False) -> object:
    """A YAML value converted and checked by its flag's argparse type (InputError if refused)."""
    from ..utils.checks import InputError, show

    def refuse(domain: str, fix: str = "") -> InputError:
        return InputError(f"{key} in {source}", value, domain, fix)

    def convert(item: object) -> object:
        if action.type is None:
            if not isinstance(item, str):
                raise refuse("must be a string", "quote it in YAML")
            result = item
        else:
            if isinstance(item, (bool, list, dict)) or item is None:
                raise refuse(f"{show(item)} is not a single value of this option")
            try:
                result = action.type(item if isinstance(item, str) else str(item))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
                kind = {int: "must be an integer", float: "must be a number"}.get(action.type)
                raise refuse(kind or str(error)) from None
        if action.choices is not None and result not in action.choices:
            raise refuse(f"must be one of {', '.join(map(str, action.choices))}")
        return result

    if value is None:
        if action.default is None:
            return None  # the option's own "not given"
        raise refuse(f"must be given a value (the default is {show(action.default)})",
                     f"remove the {key} line for the default")
    if action.nargs == 0:  # a switch: --no-pretrained, --bf16, --quiet, ...
        if not isinstance(value, bool):
            raise refuse("must be true or false (a boolean, unquoted in YAML)")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise refuse("must be a list", f"e.g. {key}: [{show(value)}]")
        if action.nargs == "+" and not value and not allow_empty:
            raise refuse("must not be empty")
        return [convert(item) for item in value]
    return convert(value)


def _train_only_keys(verb: str) -> set[str]:
    """Config keys settable from YAML for train that have no CLI flag (advanced settings)."""
    if verb not in ("train", "benchmark"):
        return set()
    from ..config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchguard`` command; returns the exit code.

    Every failure ends in one message on stderr and exit code 2 (bad input), 1 (failed work) or
    130 (Ctrl-C); see :mod:`.errors`. argparse's own usage errors exit with 2 as well.
    """
    from .errors import debug_requested, report

    logging.basicConfig(level=logging.INFO, format="patchguard: %(message)s")
    logging.getLogger("timm").setLevel(logging.WARNING)  # its INFO lines repeat ours
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = parse_args(argv)
        return COMMANDS[args.verb](args)
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - every failure becomes a message
        # --debug before the verb counts even when parsing itself failed (a bad YAML value).
        debug = debug_requested(args) or "--debug" in argv[: _verb_index(argv)]
        return report(error, args, debug)


def _verb_index(argv: list[str]) -> int:
    return next((i for i, a in enumerate(argv) if a in COMMANDS), len(argv))
