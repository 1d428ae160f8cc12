"""Domain checks for every value that enters patchguard (flag, YAML key, API argument,
checkpoint field): one message per bad value that names it, shows the value, states the allowed
range and, where there is one, the fix.

The same helpers back :class:`patchguard.config.TrainConfig`'s validation, the argparse types of
the command line (:func:`arg`) and the public functions, so that a value is judged by the same
words wherever it comes from. Nothing here imports the rest of patchguard.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

# Device names accepted before asking torch whether the device exists (utils.device does that).
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")
DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


class InputError(ValueError):
    """A value outside its domain: bad input (exit code 2 on the command line)."""

    def __init__(self, name: str, value: Any, domain: str, fix: str = "") -> None:
        self.name, self.value, self.domain, self.fix = name, value, domain, fix
        super().__init__(f"{name} = {show(value)}: {domain}" + (f"; {fix}" if fix else ""))

    def short(self) -> str:
        """The message without the name (argparse puts the flag in front itself)."""
        return f"{show(self.value)}: {self.domain}" + (f"; {self.fix}" if self.fix else "")


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, None as null, floats short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def label(name: str, flag: str | None = None) -> str:
    """``name (--flag)``: a config key with the flag that sets it."""
    return f"{name} ({flag})" if flag else name


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(kind: str, minimum: float | None, maximum: float | None,
                min_open: bool = False, max_open: bool = False) -> str:
    low = None if minimum is None else f"{'>' if min_open else '>='} {_bound(minimum)}"
    high = None if maximum is None else f"{'<' if max_open else '<='} {_bound(maximum)}"
    if low and high:
        return (f"must be {kind} in {'(' if min_open else '['}{_bound(minimum)}, "
                f"{_bound(maximum)}{')' if max_open else ']'}")
    return f"must be {kind}" + (f" {low or high}" if low or high else "")


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
            fix: str = "") -> int:
    """An int (not a bool, not a float such as 4.0) within [minimum, maximum]."""
    domain = _range_text("an integer", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, value, domain, fix)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(name, value, domain, fix)
    return int(value)


def number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
           min_open: bool = False, max_open: bool = False, fix: str = "") -> float:
    """A finite int or float (not a bool) within the range; open ends exclude the bound."""
    domain = _range_text("a finite number", minimum, maximum, min_open, max_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, value, domain, fix)
    value = float(value)
    bad = not math.isfinite(value)
    if minimum is not None:
        bad = bad or value < minimum or (min_open and value == minimum)
    if maximum is not None:
        bad = bad or value > maximum or (max_open and value == maximum)
    if bad:
        raise InputError(name, value, domain, fix)
    return value


def boolean(name: str, value: Any) -> bool:
    """A real boolean: YAML's true / false, not the string 'false' (which Python finds true)."""
    if not isinstance(value, bool):
        raise InputError(name, value, "must be true or false (a boolean, unquoted in YAML)")
    return value


def text(name: str, value: Any, allow_empty: bool = True, fix: str = "") -> str:
    """A string; numbers are refused rather than guessed (YAML reads 01 as the number 1)."""
    if not isinstance(value, str):
        raise InputError(name, value, "must be a string", fix or "quote it in YAML")
    if not allow_empty and not value.strip():
        raise InputError(name, value, "must not be empty", fix)
    return value


def path_component(name: str, value: Any, fix: str = "", allow_empty: bool = False) -> str:
    """A single file or folder name (a class name): no separator, not ``.``/``..``, not absolute.

    Class names become folder names under a data set root and a run folder; one that held a
    separator or ``..`` would read or write outside them.
    """
    text(name, value, allow_empty=allow_empty)
    if allow_empty and value == "":
        return value
    bad = (value in (".", "..") or "/" in value or "\\" in value or "\0" in value
           or value != value.strip() or value.startswith("~"))
    if bad:
        raise InputError(name, value, "must be a single folder name (no '/', '\\', '..', "
                         "leading '~' or surrounding spaces)",
                         fix or "give the class folder's own name, e.g. 'bottle'")
    return value


def optional(check: Callable[..., Any], name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """None, or a value that passes ``check``."""
    return None if value is None else check(name, value, *args, **kwargs)


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise InputError(name, value, f"must be one of {', '.join(options)}")
    return value


def integer_list(name: str, value: Any, minimum: int | None = None,
                 maximum: int | None = None, nonempty: bool = True, distinct: bool = True,
                 example: str = "[6]", fix: str = "") -> list[int]:
    """A list of integers in range (a YAML scalar is refused: write it as a list)."""
    what = "a list of integers" + (f" >= {minimum}" if minimum is not None else "")
    if maximum is not None:
        what = f"a list of integers in {minimum}..{maximum}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(name, value, f"must be {what}", f"e.g. {example}")
    if nonempty and not value:
        raise InputError(name, value, f"must be {what}, not empty", f"e.g. {example}")
    for item in value:
        try:
            integer(name, item, minimum, maximum)
        except InputError as error:
            raise InputError(name, value, f"entry {show(item)} {error.domain}",
                             fix or f"e.g. {example}") from None
    if distinct and len(set(value)) != len(value):
        raise InputError(name, value, "must hold distinct entries (one appears twice)")
    return [int(v) for v in value]


def number_list(name: str, value: Any, minimum: float | None = None,
                maximum: float | None = None, nonempty: bool = True,
                example: str = "[0.01, 0.05]") -> list[float]:
    """A list of finite numbers in range."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(name, value, "must be a list of finite numbers", f"e.g. {example}")
    if nonempty and not value:
        raise InputError(name, value, "must be a list of finite numbers, not empty",
                         f"e.g. {example}")
    out = []
    for item in value:
        try:
            out.append(number(name, item, minimum, maximum))
        except InputError as error:
            raise InputError(name, value, f"entry {show(item)} {error.domain}",
                             f"e.g. {example}") from None
    return out


def device(name: str, value: Any) -> str:
    """A device name torch understands (whether it exists is checked when it is used)."""
    if not isinstance(value, str) or not _DEVICE.match(value.strip().lower()):
        raise InputError(name, value, "is not a device name", DEVICE_HINT)
    return value.strip().lower()


def epsilon(name: str, value: Any) -> float:
    """An attack budget in 1/255 units: finite, 0..255 (0 means no attack)."""
    return number(name, value, 0.0, 255.0, fix="epsilons are in 1/255 units (8 means 8/255)")


def epsilon_units_note(flag: str, value: float) -> str | None:
    """A warning when an epsilon looks like it was given in [0, 1] units instead of 1/255."""
    if 0 < value < 1:
        return (f"{flag} {value:g} is in 1/255 units, i.e. {value:g}/255 = {value / 255:.2g} in "
                f"pixel values; if you meant {value:g} in [0, 1] units, give {value * 255:.3g}")
    return None


# ---------------------------------------------------------------------------- argparse types


def arg(check: Callable[[str, Any], Any], parse: Callable[[str], Any] = float,
        ) -> Callable[[str], Any]:
    """An argparse ``type``: parse the text, then apply ``check`` (argparse names the flag)."""
    kind = {int: "an integer", float: "a number"}.get(parse, "a value")

    def convert(text_value: str) -> Any:
        try:
            value = parse(text_value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text_value!r} is not {kind}") from None
        try:
            return check("", value)
        except InputError as error:
            raise argparse.ArgumentTypeError(error.short()) from None

    convert.__name__ = kind.split()[-1]  # argparse uses it in its own messages
    return convert


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""
    return arg(lambda name, value: integer(name, value, minimum), int)


def workers(name: str, value: Any) -> int:
    """DataLoader worker processes: 0 (the main process) to 256."""
    return integer(name, value, 0, 256, fix="0 loads in the main process")


def finite(name: str, value: Any) -> float:
    """Any finite number."""
    return number(name, value)


EPSILON_ARG = arg(epsilon)
FINITE_ARG = arg(finite)
FPR_ARG = arg(lambda name, value: number(name, value, 0.0, 1.0, max_open=True))
DEVICE_ARG = arg(device, str)
NAME_ARG = arg(path_component, str)
WORKERS_ARG = arg(workers, int)


def attack_settings(epsilons: Sequence[Any], steps: Any, batch_size: Any = 1, restarts: Any = 1,
                    n_workers: Any = 0, queries: Any = None) -> list[float]:
    """Evaluation arguments of the Python API, checked as their flags are; the epsilons.

    ``queries`` None means the attacks' default query budget.
    """
    values = [epsilon("epsilons (--epsilon-test)", eps) for eps in epsilons]
    integer("steps (--steps-test)", steps, 1)
    integer("batch_size (--batch-size)", batch_size, 1)
    integer("restarts (--restarts)", restarts, 1)
    workers("workers (--workers)", n_workers)
    optional(integer, "queries (--queries)", queries, 1)
    return values
