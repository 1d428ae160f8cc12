"""One value that says how an evaluation attacks: :class:`AttackSettings`.

The command line and the Python API build it once (checked when it is built) and the
evaluation passes it down whole. Each user-facing field is declared once, with
:func:`patchguard.config.option`: its domain, its flag and its help; the flags of ``test``,
``benchmark`` and ``visualize`` (:func:`patchguard.cli.attack_settings.attack_flags`), the value
they build and the evaluation table of docs/options.md are derived from these declarations, so
a new evaluation option is one field here plus the code that reads it. Importing this module
does not import torch (``patchguard --help`` reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import BOOLEAN, Domain, field_flag, ints, one_of, option, options_rows
from ..config import optional as optional_domain
from ..utils import checks
from .names import ATTACKS, DEFAULT_QUERIES, OBJECTIVES

if TYPE_CHECKING:
    import torch

    from .problem import AttackBudget
    from .standard import Member

EPSILON = Domain(checks.epsilon, "numbers in [0, 255], in 1/255 units (8 means 8/255)")
WORKERS = Domain(checks.workers, "integer in [0, 256]")


@dataclass(frozen=True)
class AttackSettings:
    """How an evaluation attacks: which attacks at which epsilons, their budgets, the seed of
    their random numbers, the batching, and whether ``standard`` stops early where that cannot
    change a reported metric (see docs/evaluation-speed.md); ``pixel_metrics`` False reports
    the image metrics only (the masks still steer the attacks), which lets it stop early on a
    test set with masks.

    ``epsilons`` are in 1/255 units (0 is the clean row); ``queries`` None is the Square
    Attack's default; ``standard_members`` None is the fixed citable ensemble. Every field is
    checked when the value is built (:class:`patchguard.utils.checks.InputError` naming it).
    The fields are in the order their flags are listed by ``patchguard test --help``.
    """

    epsilons: tuple[float, ...] = option(
        (0.0, 8.0), EPSILON, "epsilons in 1/255 units, 0..255; 0 is the clean row (always "
        "included)", flag="--epsilon-test")
    steps: int = option(10, ints(1), "steps of the gradient attacks", flag="--steps-test")
    attacks: tuple[str, ...] = option(
        ("pgd",), one_of(lambda: ATTACKS), "attacks to run (pgd = the paper's; worst = "
        "per-image strongest; square = gradient-free; standard = the fixed citable ensemble, "
        "per image and metric the worst; default: {default})", flag="--attack",
        choices=lambda: ATTACKS)
    objective: str = option(
        "mask", one_of(lambda: OBJECTIVES), "what the attack maximises: mask (paper), score "
        "(the image decision), map (standard has its own)", choices=lambda: OBJECTIVES)
    restarts: int = option(1, ints(1), "random restarts (pgd-rs, apgd, square)")
    queries: int | None = option(
        None, optional_domain(ints(1), f"the Square Attack's default, {DEFAULT_QUERIES}"),
        f"model queries of the Square Attack (square, and the --sanity Square check; default "
        f"{DEFAULT_QUERIES}; standard has its own)")
    early_stop: bool = option(
        True, BOOLEAN, "run standard's members on every image to their full budgets; by "
        "default an image stops once it can no longer change a reported metric (the rows are "
        "identical either way; see docs/evaluation-speed.md)")
    batch_size: int = option(16, ints(1), "images per forward and backward pass")
    workers: int = option(0, WORKERS, "data loader worker processes (0: the main process)")
    seed: int = option(0, ints(0), "seed of the attacks' random numbers", flag=None)
    pixel_metrics: bool = option(
        True, BOOLEAN, "report the pixel metrics too (false: the image metrics only, which "
        "lets standard stop early on a test set with masks)", flag=None)
    # Not an option with a flag: a custom ensemble is the API's (see standard.py).
    standard_members: tuple[Member, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        attacks = self.attacks
        if isinstance(attacks, str) or not attacks:
            raise checks.InputError(label("attacks"), attacks, "must be a non-empty list "
                                    "of attack names", f"choose from {', '.join(ATTACKS)}")
        for spec in declared():
            value, check = getattr(self, spec.name), spec.metadata["domain"].check
            if is_list(spec):
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise checks.InputError(label(spec.name), value, "must be a list")
                value = tuple(check(label(spec.name), item) for item in value)
            else:
                value = check(label(spec.name), value)
            object.__setattr__(self, spec.name, value)  # frozen: normalised once, here
        members = self.standard_members
        if members is not None:
            from .standard import Member  # torch: only when members are given

            members = tuple(members)
            if not all(isinstance(m, Member) for m in members):
                raise checks.InputError("standard_members", members, "must be Member(attack, "
                                        "objective, steps, queries) values")
        object.__setattr__(self, "standard_members", members)

    @classmethod
    def build(cls, settings: AttackSettings | None = None, **options: Any) -> AttackSettings:
        """``settings`` (default: the defaults) with ``options`` replaced, by field name.

        ``attack`` (one name) is accepted for ``attacks``; any other unknown name is a
        TypeError, as for a function's keyword arguments.
        """
        base = settings if settings is not None else cls()
        if "attack" in options:
            options["attacks"] = (options.pop("attack"),)
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown attack setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(base, **options) if options else base

    @property
    def query_budget(self) -> int:
        """The Square Attack's queries (the default when ``queries`` is None)."""
        return DEFAULT_QUERIES if self.queries is None else self.queries

    def budget(self, attack: str, generator: torch.Generator | None,
               member_generators: dict[Member, torch.Generator] | None = None) -> AttackBudget:
        """The :class:`.problem.AttackBudget` of one run of ``attack`` under these settings
        (``standard_members`` apply to ``standard`` only)."""
        from .problem import AttackBudget

        return AttackBudget(steps=self.steps, restarts=self.restarts, queries=self.query_budget,
                            generator=generator,
                            members=self.standard_members if attack == "standard" else None,
                            member_generators=member_generators)

    def attacked_epsilons(self) -> list[float]:
        """The epsilons above 0, in the given order."""
        return [e for e in self.epsilons if e > 0]



def declared() -> list[dataclasses.Field]:
    """The fields of :class:`AttackSettings` declared as options (domain, flag, help)."""
    return [f for f in dataclasses.fields(AttackSettings) if "domain" in f.metadata]


def is_list(spec: dataclasses.Field) -> bool:
    """Whether a field holds a tuple of values (its domain is each item's)."""
    return str(spec.type).startswith("tuple[")


def help_of(spec: dataclasses.Field, default: Any) -> str:
    """A field's help, its ``{default}`` replaced by ``default`` as a command line writes it."""
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return spec.metadata["help"].replace("{default}", str(shown))


def label(name: str) -> str:
    """``steps (--steps-test)``: a field's name with the flag that sets it, for messages."""
    spec = next(f for f in dataclasses.fields(AttackSettings) if f.name == name)
    return checks.label(name, field_flag(spec) if "domain" in spec.metadata else None)


def options_markdown() -> str:
    """The evaluation section of docs/options.md, from the declarations."""
    return "\n".join([
        "## evaluation", "",
        "How `test`, `benchmark` and `visualize` attack (`visualize`: one `--attack`, "
        "`--steps`; `benchmark`: default `--attack pgd standard`, and its `--workers` is "
        "training's). In the Python API each is an `AttackSettings` field, also accepted as a "
        "keyword of `evaluate_checkpoint` and `evaluate_detector`.", "",
        "| Option | Flag | Default | Domain | Description |", "|---|---|---|---|---|",
        *options_rows(dataclasses.fields(AttackSettings), no_flag="(API)",
                      describe=lambda spec: help_of(spec, spec.default)), ""])
