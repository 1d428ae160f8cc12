"""Inspection verbs: ``predict``, ``calibrate``, ``import-checkpoint``, ``export``, ``info``.

:func:`register` adds them to the ``patchguard`` parser and :data:`COMMANDS` maps each verb to
its function. Heavy modules (torch, timm) are imported inside the commands so that
``patchguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .args import DEVICE_ARG, FINITE_ARG, FPR_ARG, NAME_ARG, POSITIVE, flag

CSV_FIELDS = ("path", "score", "decision", "threshold", "heatmap", "mask")
# The names of predict's heatmaps and masks: NNNNN_<input stem>.png
_OUTPUT_NAME = re.compile(r"\d{5}_.+\.png")


def _image_size(value: str) -> int | None:
    """--image-size: a positive integer, or 'auto' to infer it from the checkpoint."""
    if value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer or 'auto'") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{size}: image size must be positive or 'auto'")
    return size


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the predict, calibrate, import-checkpoint, export and info verbs to a subparser set."""
    predict = verbs.add_parser("predict", help="scores, decisions and heatmaps for new images")
    flag(predict, "--checkpoint", required=True)
    flag(predict, "--input", nargs="+", required=True, metavar="PATH",
          help="image files, folders (searched recursively) or glob patterns")
    flag(predict, "--output-dir", default="predictions",
          help="where predictions.csv/.json, heatmaps/ and masks/ go (default: predictions)")
    flag(predict, "--threshold", type=FINITE_ARG, default=None,
          help="image threshold, a finite number (default: the checkpoint's calibrated one)")
    flag(predict, "--pixel-threshold", type=FINITE_ARG, default=None,
          help="pixel threshold for --save-masks (default: the checkpoint's)")
    flag(predict, "--batch-size", type=POSITIVE, default=16)
    flag(predict, "--device", type=DEVICE_ARG, default=None,
          help="auto (default), cpu, cuda, cuda:1, ...")
    flag(predict, "--save-masks", action="store_true", default=False,
          help="also write binary defect masks (map >= pixel threshold)")
    flag(predict, "--quiet", action="store_true", default=None, help="no progress bar")
    flag(predict, "--overwrite", action="store_true", default=False,
         help="replace files in --output-dir that patchguard did not write (its own earlier "
              "predictions are always replaced)")

    calibrate = verbs.add_parser(
        "calibrate", help="set image/pixel thresholds from normal (and anomalous) images")
    flag(calibrate, "--checkpoint", required=True, help="rewritten in place (atomically)")
    flag(calibrate, "--normal-dir", nargs="+", default=None, metavar="PATH",
          help="held-out normal images (folders, files or globs); default: the normal scores "
               "already stored in the checkpoint")
    flag(calibrate, "--anomalous-dir", nargs="+", default=None, metavar="PATH",
          help="known anomalous images: the image threshold then maximises F1")
    flag(calibrate, "--target-fpr", type=FPR_ARG, default=0.01,
          help="allowed false-positive rate on normal images and pixels, in [0, 1) "
               "(default 0.01; 0: no calibration image is flagged)")
    flag(calibrate, "--threshold-method", default="auto", choices=["auto", "quantile", "gaussian"],
          help="image threshold from normal scores: quantile (empirical), gaussian (mean + "
               "t * std * sqrt(1 + 1/n), stable with few images), auto (gaussian with fewer "
               "than 1/FPR images; the default)")
    flag(calibrate, "--batch-size", type=POSITIVE, default=16)
    flag(calibrate, "--device", type=DEVICE_ARG, default=None)
    flag(calibrate, "--quiet", action="store_true", default=None)

    imp = verbs.add_parser("import-checkpoint",
                           help="convert a checkpoint of the original PatchGuard code")
    flag(imp, "--original", required=True, help="the original's .pth state dict")
    flag(imp, "--output", required=True, help="patchguard checkpoint to write")
    flag(imp, "--overwrite", action="store_true", default=False,
          help="replace an existing --output file")
    flag(imp, "--backbone", default=None,
          help="timm name of the original's --hf_path (default vit_small_patch14_dinov2.lvd142m)")
    flag(imp, "--image-size", type=_image_size, default=224,
          help="the original's --image_size (default 224; 'auto' reads it from the weights)")
    flag(imp, "--feature-layers", type=POSITIVE, nargs="+", default=None,
          help="the original's --feature_layers (default 12)")
    flag(imp, "--reg-layers", type=POSITIVE, nargs="+", default=None)
    flag(imp, "--dsc-heads", type=POSITIVE, default=4,
          help="the original's --dsc_heads (default 4)")
    flag(imp, "--dataset", default=None, help="default: from the file name, when known")
    flag(imp, "--class-name", type=NAME_ARG, default=None, help="default: from the file name")

    export = verbs.add_parser("export", help="export a checkpoint to ONNX or OpenVINO")
    flag(export, "--checkpoint", required=True)
    flag(export, "--format", default="onnx", choices=["onnx", "openvino"],
         help="onnx (default) or openvino (IR: .xml plus .bin; optional extra 'openvino')")
    flag(export, "--output", default=None,
         help="default: the checkpoint's name with .onnx (openvino: .xml)")
    flag(export, "--overwrite", action="store_true", default=False,
          help="replace an existing --output that patchguard did not write")
    flag(export, "--opset", type=int, default=17,
          help="ONNX opset (default 17; the range the installed exporter supports; openvino "
               "converts from this ONNX graph)")
    flag(export, "--no-verify", action="store_true", default=False,
          help="skip the comparison with PyTorch (onnxruntime, or OpenVINO on the CPU)")

    info = verbs.add_parser("info", help="print a checkpoint's model card")
    flag(info, "--checkpoint", required=True)
    flag(info, "--json", action="store_true", default=False,
          help="print the metadata as JSON instead")


# ---------------------------------------------------------------------------- predict


def _safe_stem(name: str) -> str:
    stem = Path(name).stem if not name.startswith("<") else name.strip("<>").replace(" ", "_")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict on files, folders or globs; write CSV, JSON, heatmaps (and masks)."""
    from ..inference.detector import load
    from ..inference.inputs import expand_inputs
    from ..utils.device import resolve_device
    from ..utils.files import (
        atomic_write_text,
        record_outputs,
        refuse_foreign,
        refuse_inside,
        remove_own_outputs,
    )

    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {out_dir} is a file; give a folder")
    heat_dir, mask_dir = out_dir / "heatmaps", out_dir / "masks"
    # Written into an input folder, the heatmaps would be predicted on by the next run.
    refuse_inside(out_dir, "--output-dir", [("--input folder", Path(p)) for p in args.input
                                            if Path(p).is_dir()])
    # What this command writes, and nothing else; an existing file only when it wrote it.
    # Heatmap i is named after input i (failed inputs keep their number), known up front.
    inputs = [name for name, _ in expand_inputs(args.input)[0]]
    names = [f"{i:05d}_{_safe_stem(name)}.png" for i, name in enumerate(inputs)]
    targets = [out_dir / "predictions.csv", out_dir / "predictions.json"]
    targets += [heat_dir / n for n in names]
    targets += [mask_dir / n for n in names] if args.save_masks else []
    refuse_foreign(targets, "--output-dir", args.overwrite)
    detector = load(args.checkpoint, resolve_device(args.device or "auto"))
    threshold = args.threshold if args.threshold is not None else detector.threshold
    pixel_threshold = (args.pixel_threshold if args.pixel_threshold is not None
                       else detector.pixel_threshold)
    if args.save_masks and pixel_threshold is None:
        raise ValueError("--save-masks needs a pixel threshold: run 'patchguard calibrate' on "
                         "the checkpoint or pass --pixel-threshold")
    if threshold is None:
        print("warning: the checkpoint has no image threshold (run 'patchguard calibrate' or "
              "pass --threshold): scores and heatmaps only, no decisions", file=sys.stderr)
    heat_dir.mkdir(parents=True, exist_ok=True)
    if args.save_masks:
        mask_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    written: list[Path] = []
    cursor = [0]
    try:
        for part in detector.predict_batches(args.input, args.batch_size, threshold,
                                             pixel_threshold, keep_images=True,
                                             progress=not args.quiet):
            failed.extend(part.failed)
            rows.extend(_write_images(part, heat_dir, mask_dir if args.save_masks else None,
                                      out_dir, threshold, (inputs, names), cursor,
                                      written))
    finally:
        record_outputs(written)  # also after a failure: they are ours to replace next time
    # An earlier run's heatmaps and masks that this run did not rewrite (never a user's file).
    for folder in (heat_dir, mask_dir):
        remove_own_outputs(folder, _OUTPUT_NAME.pattern, keep=written)
    csv_path = out_dir / "predictions.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "threshold": "" if threshold is None else threshold})
    atomic_write_text(csv_path, buffer.getvalue())
    summary = {
        "checkpoint": str(args.checkpoint),
        "threshold": threshold,
        "threshold_source": ("--threshold" if args.threshold is not None
                             else "checkpoint" if threshold is not None else None),
        "pixel_threshold": pixel_threshold,
        "n_images": len(rows),
        "n_anomalous": sum(row["decision"] == "anomalous" for row in rows),
        "n_failed": len(failed),
        "predictions": rows,
        "failed": [{"path": path, "reason": reason} for path, reason in failed],
    }
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
    flagged = f", {summary['n_anomalous']} anomalous" if threshold is not None else ""
    print(f"predicted {len(rows)} image(s){flagged}; results in {csv_path} and "
          f"{out_dir / 'predictions.json'}, heatmaps in {heat_dir}")
    return _report_failures(failed)


def _write_images(part: Any, heat_dir: Path, mask_dir: Path | None, out_dir: Path,
                  threshold: float | None, plan: tuple[list[str], list[str]],
                  cursor: list[int], written: list[Path]) -> list[dict[str, Any]]:
    """Write one batch's heatmaps (and masks) under the planned names (input i gets name i,
    ``cursor`` the next input); its CSV rows. ``written`` collects the files."""
    import numpy as np
    from PIL import Image

    # The detector's post-processing draws the heatmaps and thresholds the masks (one colour
    # scale and one rule for predict, serve and the API).
    masks = part.masks() if mask_dir is not None else None
    rows = []
    for i, path in enumerate(part.paths):
        # Inputs come back in their order, failed ones left out: the next one of this name.
        inputs, names = plan
        while inputs[cursor[0]] != path:
            cursor[0] += 1
        name = names[cursor[0]][:-4]
        cursor[0] += 1
        heat_file = heat_dir / f"{name}.png"
        Image.fromarray(part.post.heatmap(part.images[i], part.maps[i])).save(heat_file)
        written.append(heat_file)
        mask_file = None
        if mask_dir is not None:
            mask_file = mask_dir / f"{name}.png"
            Image.fromarray(masks[i].astype(np.uint8) * 255).save(mask_file)
            written.append(mask_file)
        decision = ""
        if part.decisions is not None:
            decision = "anomalous" if part.decisions[i] else "normal"
        rows.append({
            "path": path,
            "score": float(part.scores[i]),
            "decision": decision,
            "threshold": threshold,
            "heatmap": str(heat_file.relative_to(out_dir)),
            "mask": str(mask_file.relative_to(out_dir)) if mask_file else "",
        })
    return rows


def _report_failures(failed: list[tuple[str, str]]) -> int:
    """List skipped inputs on stderr; exit code 1 when there were any."""
    if not failed:
        return 0
    print(f"{len(failed)} input(s) failed and were skipped:", file=sys.stderr)
    for path, reason in failed:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------- calibrate


def _failure_list(failed: list[tuple[str, str]], limit: int = 10) -> str:
    lines = [f"  {path}: {reason}" for path, reason in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Compute thresholds from normal (and anomalous) images and write them to the checkpoint."""
    import numpy as np

    from ..inference.detector import load
    from ..inference.thresholds import calibrate_thresholds, few_normals_note, write_thresholds
    from ..models.postprocess import PostProcessor
    from ..utils.device import resolve_device

    detector = load(args.checkpoint, resolve_device(args.device or "auto"))
    failed: list[tuple[str, str]] = []
    pixel_values = None
    if args.normal_dir:
        scores, pixels = [], []
        for part in detector.predict_batches(args.normal_dir, args.batch_size,
                                             progress=not args.quiet):
            failed.extend(part.failed)
            scores.append(part.scores)
            # Every other pixel: the maps are Gaussian-smoothed, so this loses nothing and
            # keeps memory at a quarter for large calibration sets.
            pixels.append(part.maps[:, ::2, ::2].ravel())
        normal = np.concatenate(scores)
        pixel_values = np.concatenate(pixels)
        if normal.size == 0:
            raise ValueError("no readable normal image in --normal-dir, nothing to calibrate "
                             f"on:\n{_failure_list(failed)}")
    else:
        stored = detector.info.get("normal_scores")
        if stored is None or len(stored) == 0:
            raise ValueError("the checkpoint stores no normal scores: give --normal-dir with "
                             "held-out normal images (not the test images you evaluate on)")
        normal = np.asarray(stored, dtype=np.float64)
        print(f"using the {normal.size} normal scores stored in the checkpoint "
              "(no pixel threshold without --normal-dir)")
    labelled = None
    anomalous = np.zeros(0)
    if args.anomalous_dir:
        parts = list(detector.predict_batches(args.anomalous_dir, args.batch_size,
                                              progress=not args.quiet))
        failed.extend(entry for part in parts for entry in part.failed)
        anomalous = np.concatenate([part.scores for part in parts])
        labelled = anomalous if anomalous.size else None
    thresholds = calibrate_thresholds(normal, args.target_fpr, pixel_values, labelled,
                                      method=args.threshold_method)
    if pixel_values is None:
        # Keep a pixel threshold calibrated earlier rather than erasing it.
        previous = detector.info.get("thresholds") or {}
        thresholds["pixel"] = previous.get("pixel")
    write_thresholds(args.checkpoint, thresholds, normal_scores=normal)
    post = PostProcessor.from_checkpoint({"thresholds": thresholds})  # decides as predict will
    fpr = float(np.mean(post.decide(normal)))
    print(f"image threshold {thresholds['image']:.6g} ({thresholds['method']}): "
          f"false-positive rate {fpr:.4f} on {normal.size} normal image(s)")
    if anomalous.size:
        tpr = float(np.mean(post.decide(anomalous)))
        print(f"  detection rate {tpr:.4f} on {anomalous.size} anomalous image(s), "
              f"F1 {thresholds.get('f1', float('nan')):.4f}")
    if thresholds["pixel"] is not None:
        print(f"pixel threshold {thresholds['pixel']:.6g}")
    note = few_normals_note(normal.size, args.target_fpr) if labelled is None else None
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote thresholds into {args.checkpoint}")
    return _report_failures(failed)


# ---------------------------------------------------------------------------- others


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """Convert an original PatchGuard checkpoint into ours."""
    from ..authors.checkpoints import import_original_checkpoint
    from ..config import DEFAULT_BACKBONE
    from ..utils.files import check_output_file

    # Never over the file being converted; over any other existing file only with --overwrite.
    check_output_file(args.output, "--output", [("--original file", Path(args.original))],
                      overwrite=args.overwrite)
    kwargs = {"feature_layers": args.feature_layers, "reg_layers": args.reg_layers,
              "dsc_heads": args.dsc_heads}
    if args.dataset:
        kwargs["dataset"] = args.dataset
    if args.class_name:
        kwargs["class_name"] = args.class_name
    path = import_original_checkpoint(args.original, args.output,
                                      backbone=args.backbone or DEFAULT_BACKBONE,
                                      image_size=args.image_size, **kwargs)
    print(f"converted {args.original} -> {path} (every key used)")
    print(f"next: patchguard info --checkpoint {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or OpenVINO IR and verify it."""
    from ..inference.export import check_opset, export_onnx, export_openvino, openvino_weights
    from ..utils.checks import InputError
    from ..utils.files import check_output_file

    checkpoint = Path(args.checkpoint)
    if args.format == "openvino":
        output = Path(args.output or checkpoint.with_suffix(".xml"))
        if output.suffix != ".xml":
            raise InputError("--output", str(output), "is not an .xml file",
                             "OpenVINO IR is NAME.xml (its weights go to NAME.bin)")
        # An IR this command wrote (.xml and its .bin, per the folder's manifest) is
        # replaced; any other file only with --overwrite, a checkpoint never silently.
        check_output_file(output, "--output", [("checkpoint", checkpoint)],
                          overwrite=args.overwrite)
        check_output_file(openvino_weights(output), "--output's weights file",
                          [("checkpoint", checkpoint)], overwrite=args.overwrite)
        check_opset(args.opset)
        export_openvino(checkpoint, output, opset=args.opset, verify=not args.no_verify)
        return 0
    output = Path(args.output or checkpoint.with_suffix(".onnx"))
    # An export this command wrote is replaced (the folder's manifest says so); any other
    # file only with --overwrite; a checkpoint (the input above all) never silently.
    check_output_file(output, "--output", [("checkpoint", checkpoint)],
                      overwrite=args.overwrite)
    check_opset(args.opset)
    export_onnx(checkpoint, output, opset=args.opset, verify=not args.no_verify)
    return 0


def _matching_results(checkpoint: Path) -> list[dict[str, Any]]:
    """Rows of a results.json beside the checkpoint that were computed from this very file."""
    results = checkpoint.with_name("results.json")
    if not results.is_file():
        return []
    try:
        rows = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    target = checkpoint.resolve()
    return [row for row in rows if isinstance(row, dict) and row.get("checkpoint")
            and Path(row["checkpoint"]).resolve() == target]


def cmd_info(args: argparse.Namespace) -> int:
    """Print the model card of a checkpoint."""
    from ..inference.card import model_card, read_results, results_path
    from ..models.factory import check_checkpoint
    from ..utils.checkpoint import load_checkpoint

    path = Path(args.checkpoint)
    state = load_checkpoint(path)
    check_checkpoint(path, state)  # the weights fit the network its config describes
    rows, note = read_results(path, state)
    if not rows and not results_path(path).exists():
        # No record at all (tested with --no-record, or by an old version): a results.json
        # beside it that names this file, which cannot be told to match these weights.
        matching = _matching_results(path)
        if matching:
            rows, note = matching, "from results.json, not verified against these weights"
    state["results"], state["results_note"] = rows, note
    if args.json:
        import torch

        meta = {k: v for k, v in state.items()
                if k not in ("model", "optimizer", "scheduler", "rng")}
        if isinstance(meta.get("normal_scores"), torch.Tensor):
            meta["normal_scores"] = meta["normal_scores"].tolist()
        print(json.dumps(meta, indent=2, default=str))
    else:
        print(model_card(state))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "predict": cmd_predict,
    "calibrate": cmd_calibrate,
    "import-checkpoint": cmd_import_checkpoint,
    "export": cmd_export,
    "info": cmd_info,
}
