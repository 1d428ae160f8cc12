"""The ``robustify`` verb: fine-tune a backbone whose features resist perturbations, without
labels (writes a .safetensors backbone for ``train --backbone-weights`` and a JSON card)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .args import EPSILON_ARG, POSITIVE, common_flags, data_flags, flag


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``robustify`` to the ``patchguard`` parser."""
    verb = verbs.add_parser(
        "robustify", help="robust backbone fine-tuning without labels (FARE-style): writes a "
        "backbone for train --backbone-weights and its card")
    data_flags(verb, required=False)
    common_flags(verb)
    flag(verb, "--output", required=True, help="backbone file to write (.safetensors); its "
         "card goes beside it (.json)")
    flag(verb, "--images", nargs="+", default=[],
         help="extra folders of unlabelled images (searched recursively); 'skimage' stands "
         "for scikit-image's photographs. More images, better robust generalisation")
    flag(verb, "--backbone", default=None, help="timm ViT name (default DINOv2 ViT-S/14)")
    flag(verb, "--backbone-weights", default=None,
         help="start from these weights (timm keys) instead of the pretrained ones")
    flag(verb, "--no-pretrained", dest="pretrained", action="store_false", default=True,
         help="start from random weights (for tests)")
    flag(verb, "--image-size", type=POSITIVE, default=112)
    flag(verb, "--feature-layers", type=POSITIVE, nargs="+", default=[6],
         help="the blocks the detector reads (robust preset: 6)")
    flag(verb, "--epsilon", type=EPSILON_ARG, default=4.0,
         help="L-infinity radius of the training attack, in 1/255 units (default 4)")
    flag(verb, "--steps", type=POSITIVE, default=3, help="PGD steps of the training attack")
    flag(verb, "--clean-weight", type=float, default=1.0,
         help="weight of ||f_ft(x) - f_orig(x)||^2 beside the adversarial term")
    flag(verb, "--epochs", type=POSITIVE, default=8)
    flag(verb, "--batch-size", type=POSITIVE, default=8)
    flag(verb, "--lr", type=float, default=5e-5)
    flag(verb, "--holdout", type=int, default=8,
         help="class images kept out of fine-tuning for the feature-stability figures")
    flag(verb, "--eval-epsilons", type=EPSILON_ARG, nargs="+", default=[2.0, 8.0],
         help="epsilons of the feature-stability figures (1/255)")
    flag(verb, "--eval-steps", type=POSITIVE, default=10)
    flag(verb, "--seed", type=int, default=0)
    flag(verb, "--overwrite", action="store_true", default=False,
         help="replace an existing --output and its card")


def cmd_robustify(args: argparse.Namespace) -> int:
    """Fine-tune and write the robust backbone; print its feature stability."""
    from ..config import DEFAULT_BACKBONE
    from ..training.robustify import RobustifySettings, robustify
    from ..utils.device import resolve_device

    settings = RobustifySettings(
        backbone=args.backbone or DEFAULT_BACKBONE, backbone_weights=args.backbone_weights,
        pretrained=args.pretrained, image_size=args.image_size,
        feature_layers=list(args.feature_layers), epsilon=args.epsilon, steps=args.steps,
        clean_weight=args.clean_weight, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, holdout=args.holdout, eval_epsilons=list(args.eval_epsilons),
        eval_steps=args.eval_steps, seed=args.seed)
    if not args.dataset_dir and not args.images:
        raise ValueError("robustify needs images: --dataset-dir and --class-name (the class's "
                         "training images) and/or --images FOLDER ...")
    try:
        result = robustify(args.output, settings, dataset=args.dataset or "mvtec",
                           dataset_dir=args.dataset_dir or "", class_name=args.class_name or "",
                           extra_images=args.images, overwrite=args.overwrite,
                           progress=not args.quiet,
                           device=resolve_device(args.device or "auto"))
    except KeyboardInterrupt as interrupt:
        if str(interrupt):  # which file holds the steps done (the error report says only
            print(f"patchguard: {interrupt}", file=sys.stderr)  # "interrupted.")
        raise
    stability = result.card["feature_stability"]
    for eps in stability["before"]:
        print(f"feature shift at {eps}/255: {stability['before'][eps]:.3f} before, "
              f"{stability['after'].get(eps, float('nan')):.3f} after")
    print(f"backbone: {result.path}\ncard: {result.card_path}")
    print(f"next: patchguard train --backbone-weights {result.path} --image-size "
          f"{settings.image_size} --feature-layers {' '.join(map(str, settings.feature_layers))}"
          " ...")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"robustify": cmd_robustify}
