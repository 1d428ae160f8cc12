"""The evaluation's attack flags and the one ``AttackSettings`` they build, both derived from
the fields of :class:`~patchguard.adversarial.settings.AttackSettings` (shared by ``test``,
``benchmark``, ``visualize`` and the report galleries): a field declared there with a flag is
a flag of every evaluation verb, with no line here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..utils.checks import arg
from .args import flag

# Where a parser's attack flags are stored: field name -> argparse dest (set by attack_flags,
# read by attack_settings, so that a verb that renames or skips a flag reads the right one).
_DESTS = "_attack_setting_dests"
_PARSE = {"int": int, "float": float}


def attack_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                 defaults: Mapping[str, Any] | None = None,
                 flags: Mapping[str, str] | None = None, one_attack: bool = False) -> None:
    """Add a flag for every :class:`AttackSettings` field declared with one, in field order.

    ``skip``: fields this verb does not offer (their default applies); ``defaults``: this
    verb's defaults by field; ``flags``: this verb's flag names by field; ``one_attack``:
    ``--attack`` takes one name instead of several.
    """
    from ..adversarial.settings import declared, help_of, is_list
    from ..config import field_flag

    dests = {}
    for spec in declared():
        name = (flags or {}).get(spec.name) or field_flag(spec)
        if name is None or spec.name in skip:
            continue
        default = (defaults or {}).get(spec.name, spec.default)
        choices = spec.metadata["choices"]
        several = is_list(spec) and not (one_attack and spec.name == "attacks")
        kwargs: dict[str, Any] = {}
        if spec.type == "bool":
            # A switch: given, it sets the opposite of the field's default.
            kwargs.update(action="store_true", default=None)
        else:
            scalar = spec.type.removeprefix("tuple[").split(",")[0].split("]")[0]
            scalar = scalar.replace(" | None", "")
            if choices is not None:
                kwargs["choices"] = list(choices())
            elif scalar in _PARSE:
                kwargs["type"] = arg(spec.metadata["domain"].check, _PARSE[scalar])
            if several:
                kwargs.update(nargs="+", default=list(default))
            else:
                kwargs["default"] = default[0] if is_list(spec) else default
        kwargs["help"] = help_of(spec, default)
        flag(parser, name, **kwargs)
        dests[spec.name] = name[2:].replace("-", "_")
    parser.set_defaults(**{_DESTS: dests})


def attack_settings(args: argparse.Namespace, epsilons: list[float] | None = None):
    """The one :class:`~patchguard.adversarial.settings.AttackSettings` of a ``test``,
    ``benchmark`` or ``visualize`` command line: every field whose flag the verb offers (see
    :func:`attack_flags`), with ``epsilons`` given instead of the flag's when not None."""
    from ..adversarial.settings import AttackSettings, declared, is_list

    dests = getattr(args, _DESTS)
    values: dict[str, Any] = {}
    for spec in declared():
        value = getattr(args, dests[spec.name]) if spec.name in dests else None
        if value is None:
            continue  # not offered or not given: the field's default
        if spec.type == "bool":
            value = not spec.default  # the switch was given
        elif is_list(spec):
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        values[spec.name] = value
    if epsilons is not None:
        values["epsilons"] = tuple(epsilons)
    return AttackSettings(**values)
