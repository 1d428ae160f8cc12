"""One value that says how an evaluation attacks: :class:`AttackSettings`.

The command line and the Python API build it once (checked when it is built) and the
evaluation passes it down whole, so a new evaluation option is one field here plus its flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..utils import checks
from .names import ATTACK_NAMES, DEFAULT_QUERIES, OBJECTIVE_NAMES
from .problem import AttackBudget
from .standard import Member


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
    """

    attacks: tuple[str, ...] = ("pgd",)
    epsilons: tuple[float, ...] = (0.0, 8.0)
    steps: int = 10
    restarts: int = 1
    queries: int | None = None
    objective: str = "mask"
    standard_members: tuple[Member, ...] | None = None
    seed: int = 0
    batch_size: int = 16
    workers: int = 0
    early_stop: bool = True
    pixel_metrics: bool = True

    def __post_init__(self) -> None:
        attacks = self.attacks
        if isinstance(attacks, str) or not attacks:
            raise checks.InputError("attacks (--attack)", attacks, "must be a non-empty list "
                                    "of attack names", f"choose from {', '.join(ATTACK_NAMES)}")
        normal = {
            "attacks": tuple(checks.choice("attacks (--attack)", a, ATTACK_NAMES)
                             for a in attacks),
            "epsilons": tuple(checks.epsilon("epsilons (--epsilon-test)", e)
                              for e in self.epsilons),
            "steps": checks.integer("steps (--steps-test)", self.steps, 1),
            "restarts": checks.integer("restarts (--restarts)", self.restarts, 1),
            "queries": checks.optional(checks.integer, "queries (--queries)", self.queries, 1),
            "objective": checks.choice("objective (--objective)", self.objective,
                                       OBJECTIVE_NAMES),
            "seed": checks.integer("seed", self.seed, 0),
            "batch_size": checks.integer("batch_size (--batch-size)", self.batch_size, 1),
            "workers": checks.workers("workers (--workers)", self.workers),
            "early_stop": checks.boolean("early_stop (--no-early-stop)", self.early_stop),
            "pixel_metrics": checks.boolean("pixel_metrics", self.pixel_metrics),
        }
        members = self.standard_members
        if members is not None:
            members = tuple(members)
            if not all(isinstance(m, Member) for m in members):
                raise checks.InputError("standard_members", members, "must be Member(attack, "
                                        "objective, steps, queries) values")
        normal["standard_members"] = members
        for name, value in normal.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here

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
        return AttackBudget(steps=self.steps, restarts=self.restarts, queries=self.query_budget,
                            generator=generator,
                            members=self.standard_members if attack == "standard" else None,
                            member_generators=member_generators)

    def attacked_epsilons(self) -> list[float]:
        """The epsilons above 0, in the given order."""
        return [e for e in self.epsilons if e > 0]

