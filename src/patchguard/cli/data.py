"""The ``patchguard data`` verb: ``info`` (validate, list a layout), ``download``, ``foreground``.

:func:`register` adds the verb to the ``patchguard`` parser and :data:`COMMANDS` maps it to
:func:`cmd_data`, which dispatches on the sub-verb.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..utils.checks import DEVICE_ARG, NAME_ARG
from .args import flag

DEFAULT_DATASET = "mvtec"


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``data info | download | foreground`` to the ``patchguard`` parser."""
    from ..data.layouts import LAYOUTS

    data = verbs.add_parser("data", help="inspect, download and prepare data sets")
    subs = data.add_subparsers(dest="data_verb", required=True, metavar="SUBVERB")

    info = subs.add_parser("info", help="per-class counts, masks, sizes and problems")
    flag(info, "--dataset", default=DEFAULT_DATASET, choices=sorted(LAYOUTS),
          help=f"layout (default {DEFAULT_DATASET})")
    flag(info, "--dataset-dir", required=True, help="root folder holding one folder per class")
    flag(info, "--class-name", type=NAME_ARG, default=None,
         help="one class (default: every class found)")
    flag(info, "--quick", action="store_true", default=False,
          help="read file headers only instead of decoding every image")

    download = subs.add_parser("download", help="download a data set and its foreground masks")
    flag(download, "--dataset", required=True, help="data set name, e.g. mvtec, visa")
    flag(download, "--root", default=None, help="target folder (default: datasets/<dataset>)")
    flag(download, "--archive", nargs="+", default=None,
          help="archive(s) you downloaded by hand (e.g. from a Google Drive folder)")
    flag(download, "--foreground-archive", default=None,
          help="foreground-mask archive downloaded by hand")
    flag(download, "--overwrite", action="store_true", default=False,
          help="replace files already in the data set folder by the archive's (default: keep "
               "them and say so)")
    flag(download, "--masks-only", action="store_true", default=False,
          help="only the published foreground masks, into a data set already under --root "
               "(e.g. one you extracted yourself)")

    foreground = subs.add_parser("foreground", help="generate missing foreground masks")
    flag(foreground, "--dataset", default=DEFAULT_DATASET, choices=sorted(LAYOUTS))
    flag(foreground, "--dataset-dir", required=True)
    flag(foreground, "--class-name", type=NAME_ARG, default=None,
         help="class folder name (default: all)")
    flag(foreground, "--method", default="auto", choices=["auto", "dino", "threshold", "full"])
    flag(foreground, "--device", type=DEVICE_ARG, default="auto",
          help="auto (default), cpu, cuda, cuda:1, ...")
    flag(foreground, "--overwrite", action="store_true", default=False,
          help="replace existing masks (default: only fill in missing ones)")


def _row(name: str, value: Any) -> str:
    return f"  {name:<24} {value}"


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of one :func:`patchguard.data.layouts.inspect_layout` report."""
    lines = [f"== {report['dataset']} / {report['class_name']}  ({report['class_dir'] or '-'})"]
    defects = ", ".join(f"{k} ({v})" for k, v in report["defect_types"].items()) or "-"
    sizes = ", ".join(f"{k} ({v})" for k, v in list(report["image_sizes"].items())[:5]) or "-"
    if len(report["image_sizes"]) > 5:
        sizes += f", ... {len(report['image_sizes']) - 5} more"
    lines += [
        _row("train images", report["train"]),
        _row("foreground masks", f"{report['foreground_masks']} of {report['train']}"),
        _row("test images", f"{report['test']} (normal {report['test_normal']}, "
                            f"anomalous {report['test_anomalous']})"),
        _row("defect types", defects),
        _row("anomalous with mask", report["anomalous_with_mask"]),
        _row("anomalous without mask", report["anomalous_without_mask"]),
        _row("image sizes", sizes),
    ]
    problems = report["problems"]
    lines.append(_row("problems", len(problems) if problems else "none"))
    lines += [f"    ! {problem}" for problem in problems]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """Print a table per class; exit status 1 when any problem was found."""
    from ..data.layouts import discover_classes, inspect_layout

    root = _existing_folder(args.dataset_dir)
    classes = [args.class_name] if args.class_name else discover_classes(root)
    if not classes:
        print(f"no class folders found in {root} (expected {args.dataset} class folders)")
        return 1
    failed = 0
    for class_name in classes:
        report = inspect_layout(args.dataset, root, class_name, decode=not args.quick)
        print(format_report(report))
        failed += bool(report["problems"])
    if failed:
        print(f"\n{failed} of {len(classes)} class(es) have problems")
        return 1
    print(f"\n{len(classes)} class(es) OK")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download a data set with :func:`patchguard.data.download.download_dataset`."""
    try:
        from ..data.download import download_dataset
    except ImportError as error:
        print(f"patchguard data download is not available in this installation ({error})")
        return 2
    from ..data.download import DownloadError, LayoutError, UnsafeArchiveError

    root = args.root or str(Path("datasets") / args.dataset)
    if Path(root).exists() and not Path(root).is_dir():
        raise NotADirectoryError(f"--root {root} is a file; give a folder")
    try:
        if args.masks_only:
            from ..data.download import download_foreground

            placed = download_foreground(args.dataset, root, progress=True,
                                         archive=args.foreground_archive,
                                         overwrite=args.overwrite)
            print(f"foreground masks placed for {len(placed)} class(es): {', '.join(placed)}")
            return 0
        path = download_dataset(args.dataset, root, progress=True, archive=args.archive,
                                foreground_archive=args.foreground_archive,
                                overwrite=args.overwrite)
    except (DownloadError, LayoutError, UnsafeArchiveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"data set ready in {path}")
    return 0


def cmd_foreground(args: argparse.Namespace) -> int:
    """Write foreground masks with :func:`patchguard.data.foreground.generate_foreground_masks`."""
    try:
        from ..data.foreground import generate_foreground_masks
    except ImportError as error:
        print(f"patchguard data foreground is not available in this installation ({error})")
        return 2
    from ..data.layouts import discover_classes
    from ..utils.device import resolve_device

    resolve_device(args.device)  # an unknown or absent device is refused before any work
    root = _existing_folder(args.dataset_dir)
    classes = [args.class_name] if args.class_name else discover_classes(root)
    if not classes:
        print(f"error: no class folders in {args.dataset_dir}", file=sys.stderr)
        return 2
    for class_name in classes:
        folder = generate_foreground_masks(
            args.dataset, args.dataset_dir, class_name, method=args.method,
            device=args.device, progress=True, overwrite=args.overwrite,
        )
        print(f"{class_name}: foreground masks in {folder}")
    return 0


def _existing_folder(path: str) -> Path:
    """--dataset-dir as a Path; bad input (exit code 2) when it is missing or a file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data set directory {root} does not exist; check --dataset-dir")
    if not root.is_dir():
        raise NotADirectoryError(f"--dataset-dir {root} is a file, not a folder")
    return root


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info, "download": cmd_download, "foreground": cmd_foreground,
}


def cmd_data(args: argparse.Namespace) -> int:
    """Run the ``data`` sub-verb named in args.data_verb."""
    return SUBCOMMANDS[args.data_verb](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"data": cmd_data}
