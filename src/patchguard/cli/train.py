"""The ``train`` verb: train one class (writes OUTPUT_DIR/last.pt)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from .args import common_flags, data_flags, flag, logger_flags

logger = logging.getLogger(__name__)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``patchguard`` parser."""
    from ..config import flag_arguments

    train = verbs.add_parser("train", help="train one class (writes OUTPUT_DIR/last.pt)")
    data_flags(train, required=False)
    common_flags(train)
    # Every training option's flag comes from its declaration in patchguard/config.py.
    for name, kwargs in flag_arguments(skip=("dataset", "dataset_dir", "class_name", "device")):
        flag(train, name, **kwargs)
    flag(train, "--resume", nargs="?", const="auto", default=None,
         help="continue from a checkpoint (default OUTPUT_DIR/last.pt; a run folder means its "
              "last.pt)")
    flag(train, "--download", action="store_true", default=None,
         help="download the data set first when --dataset-dir (default datasets/DATASET) "
              "lacks the class")
    logger_flags(train, "OUTPUT_DIR/logs")
    flag(train, "--overwrite", action="store_true", default=False,
         help="replace a run already in OUTPUT_DIR: once every input is checked, its "
              "checkpoints, log and results are removed (without it such a folder is refused)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one class."""
    from ..config import TrainConfig, build_config
    from ..training.run_state import resume_config
    from ..training.trainer import train

    skip = {"verb", "config", "quiet", "resume", "yaml_extra", "overwrite", "debug", "download",
            "logger", "log_dir"}
    overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    for key, value in getattr(args, "yaml_extra", {}).items():  # flags given now still win
        overrides.setdefault(key, value)
    resume = None
    if args.resume:
        output_dir = overrides.get("output_dir", TrainConfig.output_dir)
        resume = Path(output_dir) / "last.pt" if args.resume == "auto" else Path(args.resume)
        if resume.is_dir():  # a run folder: its last.pt
            resume = resume / "last.pt"
        if not resume.exists():
            from ..training.runs import describe_run, has_checkpoint

            held = describe_run(resume.parent)
            if held is None or has_checkpoint(resume.parent) or "dataset_dir" not in overrides:
                raise FileNotFoundError(f"--resume: {resume} does not exist")
            # A run that stopped before its first checkpoint (a full disk): nothing to
            # continue, so the same command starts it afresh, as the error message advised.
            logger.warning("--resume: %s holds no checkpoint (%s); starting the run afresh",
                           resume.parent, held)
            args.resume, resume = None, None
    if resume is not None:
        # Resume continues the saved run: only the flags given now change it.
        overrides.setdefault("output_dir", str(resume.parent))
        config = resume_config(resume, overrides)
    else:
        config = build_config(overrides.get("preset") or "paper", None, overrides)
        if args.download:  # the original's --use_data_prep
            from .weights import ensure_data

            config = dataclasses.replace(config, dataset_dir=ensure_data(
                config.dataset, config.dataset_dir or None, config.class_name or None,
                args.quiet))
        if not config.dataset_dir:
            raise ValueError(
                "train needs --dataset-dir and --class-name (or a --config holding them; "
                "single-class data sets need only --dataset-dir)"
            )
    last = train(config, resume=resume, progress=not args.quiet, overwrite=args.overwrite,
                 loggers=args.logger or (), log_dir=args.log_dir)
    print(f"checkpoint: {last}")
    if args.logger:
        print(f"logged: {', '.join(args.logger)} in {args.log_dir or last.parent / 'logs'}")
    print(f"next: patchguard test --checkpoint {last}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"train": cmd_train}
