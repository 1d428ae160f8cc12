"""The ``train`` verb: train one class (writes OUTPUT_DIR/last.pt)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from .args import common_flags, data_flags, flag, logger_flags


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``patchguard`` parser."""
    from ..config import PRESETS, TRAIN_ATTACKS, TRAIN_OBJECTIVES

    train = verbs.add_parser("train", help="train one class (writes OUTPUT_DIR/last.pt)")
    data_flags(train, required=False)
    common_flags(train)
    flag(train, "--output-dir", default=None, help="where checkpoints and logs go")
    flag(train, "--preset", default=None, choices=sorted(PRESETS),
         help="paper: METHOD.md exactly (default); fast: short budgets; robust: the best "
              "robustness found so far at CPU budgets (does not reach issue 12's target); "
              "robust-features: a kNN head on a backbone fine-tuned without labels")
    flag(train, "--epochs", type=int, default=None)
    flag(train, "--batch-size", type=int, default=None)
    flag(train, "--image-size", type=int, default=None)
    flag(train, "--lr", type=float, default=None)
    flag(train, "--backbone-lr", type=float, default=None,
         help="separate backbone learning rate (default: same as --lr); 0 freezes it")
    flag(train, "--warmup-epochs", type=int, default=None)
    flag(train, "--backbone", default=None, help="timm ViT name")
    flag(train, "--backbone-weights", default=None,
         help="local backbone weights (timm keys, .safetensors or .pth)")
    flag(train, "--no-pretrained", dest="pretrained", action="store_const", const=False,
         default=None, help="random initialisation, like the original code")
    flag(train, "--feature-layers", type=int, nargs="+", default=None)
    flag(train, "--reg-layers", type=int, nargs="+", default=None)
    flag(train, "--reg-coefficients", type=float, nargs="+", default=None,
         help="one KL weight per regularised layer (default 0.005 0.01 0.05)")
    flag(train, "--epsilon-train", type=float, default=None, help="in 1/255 units")
    flag(train, "--steps-train", type=int, default=None)
    flag(train, "--no-adv-train", dest="adv_train", action="store_const", const=False,
         default=None)
    flag(train, "--train-attack", default=None, choices=list(TRAIN_ATTACKS),
         help="training attack: pgd (METHOD.md, default), fgsm-rs (random start, step 1.25 "
              "eps), n-fgsm (noise 2 eps, step eps, no projection), free (--free-replays)")
    flag(train, "--train-objective", default=None, choices=list(TRAIN_OBJECTIVES),
         help="what pgd/fgsm-rs/n-fgsm ascend: mask (METHOD.md) or score (top-k image score)")
    flag(train, "--free-replays", type=int, default=None,
         help="free: optimiser steps per batch, each updating the perturbation (4)")
    flag(train, "--carry-perturbations", action="store_const", const=True, default=None,
         help="clean views start from their perturbation of the previous epoch")
    flag(train, "--eps-ramp", type=float, default=None,
         help="share of training over which the training epsilon ramps up from 0 (0: none)")
    flag(train, "--late-steps-train", type=int, default=None,
         help="attack steps for the last --late-fraction of training (0: --steps-train)")
    flag(train, "--late-fraction", type=float, default=None)
    flag(train, "--trades-weight", type=float, default=None,
         help="weight of the KL between each view's patch logits and its attacked twin's")
    flag(train, "--rank-weight", type=float, default=None,
         help="weight of a pairwise ranking loss: every (attacked) pseudo anomaly's image "
              "score above every (attacked) normal view's")
    flag(train, "--frozen-blocks", type=int, default=None,
         help="freeze the patch embedding and the first N backbone blocks")
    flag(train, "--probe-every", type=int, default=None,
         help="every N epochs, robust AUROC on held-out images (catastrophic overfitting)")
    flag(train, "--head", default=None, choices=["discriminator", "knn"],
         help="discriminator: PatchGuard's (default); knn: a patch memory bank scored by "
              "nearest-neighbour distance, built in one pass (no optimiser)")
    flag(train, "--knn-bank-size", type=int, default=None,
         help="knn: patches kept in the bank (0: all; else a --knn-coreset of them)")
    flag(train, "--knn-coreset", default=None, choices=["greedy", "random"])
    flag(train, "--robustify-epsilon", type=float, default=None,
         help="first fine-tune the backbone's features to resist this L-inf radius (1/255; "
              "patchguard robustify, cached per class and settings); 0 skips it, and so does "
              "--no-adv-train")
    flag(train, "--robustify-steps", type=int, default=None)
    flag(train, "--robustify-epochs", type=int, default=None)
    flag(train, "--robustify-images", nargs="+", default=None,
         help="extra unlabelled image folders for that fine-tuning ('skimage': scikit-image's "
              "photographs)")
    flag(train, "--no-reg", dest="reg", action="store_const", const=False, default=None)
    flag(train, "--bf16", action="store_const", const=True, default=None,
         help="bf16 autocast (for GPUs; runs slower on CPUs)")
    flag(train, "--val-fraction", type=float, default=None,
         help="hold out this share of train images to set decision thresholds (fast: 0.1)")
    flag(train, "--target-fpr", type=float, default=None,
         help="false-positive rate on held-out normal images for the thresholds (0.01)")
    flag(train, "--auto-foreground", action="store_const", const=True, default=None,
         help="generate foreground masks for classes without them (fast preset: on)")
    flag(train, "--compile", action="store_const", const=True, default=None,
         help="torch.compile the attack's forward pass and the backbone blocks that are not "
              "regularised (pays off on GPUs)")
    flag(train, "--no-tf32", dest="tf32", action="store_const", const=False, default=None,
         help="on CUDA, keep fp32 matmuls in full fp32 (TF32 is on by default)")
    flag(train, "--seed", type=int, default=None)
    flag(train, "--workers", type=int, default=None)
    flag(train, "--save-every", type=int, default=None)
    flag(train, "--checkpoint-every-min", type=float, default=None,
         help="write last.pt when this many minutes have passed since the last write (default "
              "10; also at the end and on Ctrl-C); 0 writes every epoch")
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
    from ..training.checkpoints import resume_config
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
            raise FileNotFoundError(f"--resume: {resume} does not exist")
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
