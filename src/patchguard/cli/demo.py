"""The ``demo`` verb: build the offline demo data, train, attack, report."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .args import common_flags, flag


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``patchguard`` parser."""
    demo = verbs.add_parser(
        "demo", help="offline demo: build data, make a detector robust, attack, report",
        description="Build the offline demo data, train the robust-features preset beside its "
                    "non-robust twin (--no-adv-train) and attack both (the paper's PGD and "
                    "standard, at 2/255 and 8/255).")
    common_flags(demo)
    flag(demo, "--output-dir", default="patchguard_demo")
    flag(demo, "--classes", nargs="+", default=None,
         help="demo classes (default brick gravel; also grass, washer: ~4 min each)")
    flag(demo, "--epochs", type=int, default=None,
         help="epochs of the robust backbone fine-tuning (the preset's robustify_epochs)")
    flag(demo, "--image-size", type=int, default=None)
    flag(demo, "--standard-images", type=int, default=None,
         help="normal and anomalous test images each that standard attacks per model")
    flag(demo, "--no-compare", action="store_true", default=None,
         help="skip the non-robust twin (--no-adv-train)")


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
        standard_per_label=args.standard_images,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": cmd_demo}
