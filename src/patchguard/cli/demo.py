"""The ``demo`` verb: build the offline demo data, train, attack, report."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .args import common_flags, flag


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``patchguard`` parser."""
    demo = verbs.add_parser("demo", help="offline demo: build data, train, attack, report")
    common_flags(demo)
    flag(demo, "--output-dir", default="patchguard_demo")
    flag(demo, "--classes", nargs="+", default=None, help="subset of the demo classes")
    flag(demo, "--epochs", type=int, default=None)
    flag(demo, "--image-size", type=int, default=None)
    flag(demo, "--no-compare", action="store_true", default=None,
         help="skip the --no-adv-train comparison run")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo."""
    from ..demo.run import run_demo

    run_demo(
        output_dir=args.output_dir,
        classes=args.classes,
        epochs=args.epochs,
        image_size=args.image_size,
        compare=not args.no_compare,
        device=args.device or "auto",
        progress=not args.quiet,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": cmd_demo}
