"""The evaluation's attack arguments as one value: the ``AttackSettings`` of a command line,
and the ``--no-early-stop`` flag (shared by ``test``, ``benchmark``, ``visualize`` and the
report galleries)."""

from __future__ import annotations

import argparse

from .args import flag


def attack_settings(args: argparse.Namespace, epsilons: list[float] | None = None,
                    workers: int = 0):
    """The one :class:`~patchguard.adversarial.settings.AttackSettings` of a ``test``,
    ``benchmark`` or ``visualize`` command line (``visualize``: one attack, ``--steps``)."""
    from ..adversarial.settings import AttackSettings

    attacks = [args.attack] if isinstance(args.attack, str) else list(args.attack)
    steps = getattr(args, "steps_test", None) or getattr(args, "steps", None)
    options = {"epsilons": tuple(epsilons)} if epsilons is not None else {}
    return AttackSettings(attacks=tuple(attacks), steps=steps, objective=args.objective,
                          restarts=args.restarts, queries=args.queries,
                          batch_size=args.batch_size, workers=workers,
                          early_stop=not getattr(args, "no_early_stop", False), **options)


def early_stop_flag(parser: argparse.ArgumentParser) -> None:
    """--no-early-stop: run every attack on every image to its full budget."""
    flag(parser, "--no-early-stop", action="store_true", default=None,
         help="run standard's members on every image to their full budgets; by default an "
         "image stops once it can no longer change a reported metric (the rows are identical "
         "either way; see docs/evaluation-speed.md)")
