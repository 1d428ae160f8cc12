"""The ``weights`` verb: ``download`` the authors' per-class checkpoints (and import them),
``list`` what is known about them. Also the ``--download`` helpers of ``train`` and ``test``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .args import NAME_ARG, POSITIVE, flag


def import_flags(parser: argparse.ArgumentParser) -> None:
    """The import settings, defaulting to the authors' model (as ``import-checkpoint``)."""
    from .tools import _image_size

    flag(parser, "--backbone", default=None,
         help="timm name of the original's --hf_path (default vit_small_patch14_dinov2.lvd142m)")
    flag(parser, "--image-size", type=_image_size, default=224,
         help="the original's --image_size (default 224; 'auto' reads it from the weights)")
    flag(parser, "--feature-layers", type=POSITIVE, nargs="+", default=None,
         help="the original's --feature_layers (default 12)")
    flag(parser, "--reg-layers", type=POSITIVE, nargs="+", default=None)
    flag(parser, "--dsc-heads", type=POSITIVE, default=4,
         help="the original's --dsc_heads (default 4)")


def location_flags(parser: argparse.ArgumentParser) -> None:
    """--drive-id, --url, --index and --sha256: where one class's weights are."""
    flag(parser, "--drive-id", default=None,
         help="Google Drive file id (or share link) of the class's .pth")
    flag(parser, "--url", default=None, help="plain http(s) URL of the class's .pth")
    flag(parser, "--index", default=None,
         help="JSON/YAML file mapping classes to Drive ids (default: $PATCHGUARD_WEIGHTS_INDEX)")
    flag(parser, "--sha256", default=None, help="expected sha256 of the downloaded .pth")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``weights download | list`` to the ``patchguard`` parser."""
    weights = verbs.add_parser(
        "weights", help="the authors' published per-class checkpoints (not backbone weights)")
    subs = weights.add_subparsers(dest="weights_verb", required=True, metavar="SUBVERB")

    download = subs.add_parser(
        "download", help="download a class's checkpoint and import it (OUTPUT_DIR/CLASS/last.pt)")
    # No argparse choices: a data set of the paper without published weights gets a message
    # that says so (authors.index.check_dataset_class), not "invalid choice".
    flag(download, "--dataset", required=True, help="mvtec or visa (the authors publish no "
         "weights for the other data sets)")
    flag(download, "--class-name", type=NAME_ARG, required=True)
    flag(download, "--output-dir", default=None,
         help="where CLASS/last.pt and the original .pth go (default: weights/DATASET)")
    location_flags(download)
    import_flags(download)
    flag(download, "--overwrite", action="store_true", default=False,
         help="replace a checkpoint at OUTPUT_DIR/CLASS/last.pt that was not imported from "
              "this download")
    flag(download, "--quiet", action="store_true", default=False, help="no progress bar")

    listing = subs.add_parser("list", help="the classes with published weights and their "
                              "Google Drive file ids")
    flag(listing, "--dataset", default=None, help="mvtec or visa (default: both)")
    flag(listing, "--index", default=None,
         help="JSON/YAML index of Drive ids (default: $PATCHGUARD_WEIGHTS_INDEX)")


def import_kwargs(args: argparse.Namespace) -> dict:
    """The import settings of the flags, as keyword arguments of the import functions."""
    from ..config import DEFAULT_BACKBONE

    return {"backbone": args.backbone or DEFAULT_BACKBONE, "image_size": args.image_size,
            "feature_layers": args.feature_layers, "reg_layers": args.reg_layers,
            "dsc_heads": args.dsc_heads}


def cmd_download(args: argparse.Namespace) -> int:
    """Download and import one class's published checkpoint."""
    from ..authors.checkpoints import default_checkpoint, download_original_checkpoint
    from ..authors.index import check_dataset_class

    dataset, class_name = check_dataset_class(args.dataset, args.class_name)
    target = default_checkpoint(dataset, class_name, args.output_dir)
    path = download_original_checkpoint(
        dataset, class_name, target, drive_id=args.drive_id, url=args.url, index=args.index,
        sha256=args.sha256, overwrite=args.overwrite, progress=not args.quiet,
        **import_kwargs(args))
    original = path.parent / f"patchguard_{dataset}_{class_name}.pth"
    print(f"checkpoint: {path} (imported from {original})")
    print(f"next: patchguard test --checkpoint {path} --dataset-dir DATASET_DIR")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print per class the file id (the authors', or one from an index) or that none exists."""
    import os

    from ..authors.index import (
        DRIVE_FOLDERS,
        INDEX_ENV,
        KNOWN_FILES,
        UNPUBLISHED,
        check_dataset,
        read_index,
    )

    index = args.index or os.environ.get(INDEX_ENV) or None
    for dataset in [check_dataset(args.dataset)] if args.dataset else list(DRIVE_FOLDERS):
        from_index = read_index(index, dataset) if index else {}
        print(f"{dataset}: weights folder {DRIVE_FOLDERS[dataset]}")
        for (name_dataset, name), entry in KNOWN_FILES.items():
            if name_dataset != dataset:
                continue
            entry = from_index.get(name, entry)
            where = (f"Drive file {entry.drive_id}" if entry.drive_id else entry.url
                     if entry.url else "not published by the authors")
            print(f"  {name:<12} {entry.filename:<36} {where}"
                  + (f" ({entry.source})" if entry.known else ""))
    print(f"data sets without published weights: {', '.join(UNPUBLISHED)}")
    print("no SHA-256 is published: 'weights download' records the first download's in the "
          "model card (trust on first use)")
    return 0


# ------------------------------------------------------------------ train/test --download


def ensure_data(dataset: str | None, dataset_dir: str | None, class_name: str | None,
                quiet: bool = False) -> str:
    """``--download``: the data set folder, fetched first when the class is missing."""
    from ..data.download.ensure import ensure_dataset

    return str(ensure_dataset(dataset or "mvtec", dataset_dir, class_name, progress=not quiet))


def ensure_checkpoint(args: argparse.Namespace) -> None:
    """``test --download``: fetch and import the authors' weights when --checkpoint is missing."""
    from ..authors.checkpoints import download_original_checkpoint
    from ..authors.index import check_dataset_class

    checkpoint = Path(args.checkpoint)
    if checkpoint.exists():
        return
    if not args.class_name:
        raise ValueError(f"--checkpoint {checkpoint} does not exist; to download the authors' "
                         "weights with --download, give --dataset (mvtec or visa) and "
                         "--class-name")
    dataset, class_name = check_dataset_class(args.dataset or "mvtec", args.class_name)
    print(f"{checkpoint} does not exist: downloading the authors' {dataset} {class_name} "
          "weights", file=sys.stderr)
    download_original_checkpoint(dataset, class_name, checkpoint, progress=not args.quiet)


def prepare_test_download(args: argparse.Namespace) -> None:
    """``test --download``: the checkpoint (the authors' weights) and the test data, if missing.

    Without --dataset-dir the data go where the checkpoint's training data were, or to
    datasets/<name> for an imported checkpoint (which records none).
    """
    ensure_checkpoint(args)
    if args.dataset_dir:
        args.dataset_dir = ensure_data(args.dataset, args.dataset_dir, args.class_name,
                                       args.quiet)
        return
    config = stored_config(Path(args.checkpoint))
    args.dataset_dir = ensure_data(args.dataset or config.get("dataset"),
                                   config.get("dataset_dir") or None,
                                   args.class_name or config.get("class_name"), args.quiet)


def stored_config(checkpoint: Path) -> dict:
    """A checkpoint's config, read without loading its tensors (memory-mapped)."""
    import torch

    from ..utils.checkpoint import load_checkpoint

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old-format file cannot be mapped; the full reader says what is wrong
        state = load_checkpoint(checkpoint)
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{checkpoint} is not a patchguard checkpoint (no 'config' entry)")
    return config


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "download": cmd_download, "list": cmd_list,
}


def cmd_weights(args: argparse.Namespace) -> int:
    """Run the ``weights`` sub-verb named in args.weights_verb."""
    return SUBCOMMANDS[args.weights_verb](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"weights": cmd_weights}
