"""The ``benchmark`` verb: evaluate one checkpoint per class (training them first with
``--train``, one class per GPU at a time, resumable) and write the paper-style table; with
``--baselines``, anomalib's detectors are trained on each class and attacked beside PatchGuard.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .args import (
    NAME_ARG,
    NON_NEGATIVE,
    POSITIVE,
    common_flags,
    flag,
)
from .attack_settings import attack_flags, attack_settings

OFFLINE_BACKBONE = "resnet18"  # random-init default of PatchCore and PaDiM: downloads nothing


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``patchguard`` parser."""
    from ..baselines.registry import BASELINES
    from ..config import PRESETS
    from ..evaluation.report.headline import REPORTED_EPSILONS

    bench = verbs.add_parser("benchmark", help="evaluate several classes: paper-style table")
    flag(bench, "--dataset", default=None)
    flag(bench, "--dataset-dir", default=None)
    flag(bench, "--classes", nargs="+", required=True, type=NAME_ARG,
         help="class names, or 'all' for every CHECKPOINT_DIR/<class>/last.pt")
    flag(bench, "--checkpoint-dir", required=True,
         help="holds <class>/last.pt (or <class>.pt) per class")
    common_flags(bench)
    # The paper's PGD and, beside it, the fixed standard evaluation (docs/evaluation.md);
    # --attack pgd skips standard, which costs about 1650 clean passes per image. --workers
    # is training's here (with --train): the evaluation loads in the main process.
    # Both of the field's epsilons by default (evaluation/report/headline.py): 2/255 is the
    # headline from 224 px up, 8/255 below; the table marks the one for the run's image size.
    attack_flags(bench, skip=("workers",), defaults={"attacks": ("pgd", "standard"),
                                                     "epsilons": (0.0, *REPORTED_EPSILONS)})
    flag(bench, "--output-dir", default=None,
         help="where benchmark.md/.json/.csv/.html and benchmark_vs_epsilon.png go (default: "
              "CHECKPOINT_DIR)")
    flag(bench, "--overwrite", action="store_true", default=False,
         help="replace those files in --output-dir even when patchguard did not write them")
    flag(bench, "--train", action="store_true", default=False,
         help="train every class first (skipping finished ones, resuming partial ones)")
    flag(bench, "--preset", default=None, choices=sorted(PRESETS), help="with --train")
    flag(bench, "--epochs", type=POSITIVE, default=None, help="with --train")
    flag(bench, "--image-size", type=POSITIVE, default=None, help="with --train")
    flag(bench, "--workers", type=NON_NEGATIVE, default=None, help="with --train")
    flag(bench, "--gallery", type=NON_NEGATIVE, default=4,
         help="test images per class shown clean and attacked in benchmark.html (default 4)")
    flag(bench, "--jobs", type=POSITIVE, default=None,
         help="classes trained at once, one per GPU (default: the number of GPUs, or 1)")
    flag(bench, "--baselines", nargs="+", default=None, choices=list(BASELINES),
         help="also train these anomalib detectors on each class and attack them the same way "
              "(needs pip install 'patchguard[anomalib]'); kept in CHECKPOINT_DIR/<class>/"
              "baselines/")
    flag(bench, "--baseline-backbone", default=None,
         help=f"timm backbone of PatchCore and PaDiM (default {OFFLINE_BACKBONE}, or anomalib's "
              "default with --baseline-pretrained; EfficientAd has its own networks)")
    bench.add_argument("--baseline-pretrained", "--baseline_pretrained",
                       action=argparse.BooleanOptionalAction, default=False,
                       help="ImageNet weights for the baselines (a download; default: random "
                            "initialisation, which works offline but is not the papers' "
                            "baselines)")
    flag(bench, "--efficient-ad-steps", type=POSITIVE, default=None,
         help="EfficientAd's training steps (default 70000, the paper's: hours on a CPU)")


def _class_results_path(root: Path, name: str) -> Path:
    return root / name / "benchmark_rows.json"


def _train_class(args: argparse.Namespace, name: str, root: Path) -> None:
    """Train one class of a sweep, resuming a partial run; no-op when it is complete."""
    from ..config import build_config
    from ..training.run_state import resume_config
    from ..training.trainer import train
    from ..utils.checkpoint import load_checkpoint

    last = root / name / "last.pt"
    overrides = {k: v for k, v in {
        "dataset": args.dataset or "mvtec", "dataset_dir": args.dataset_dir, "class_name": name,
        "output_dir": str(root / name), "epochs": args.epochs, "image_size": args.image_size,
        "device": args.device, "workers": args.workers}.items() if v is not None}
    overrides = {**getattr(args, "yaml_extra", {}), **overrides}
    if last.exists():
        state = load_checkpoint(last)
        config = resume_config(last, {k: overrides[k] for k in ("epochs", "device", "workers")
                                      if k in overrides})
        if state["epoch"] >= config.epochs:
            return
        print(f"{name}: resuming after epoch {state['epoch']}")
        train(config, resume=last, progress=not args.quiet)
        return
    print(f"{name}: training")
    # No last.pt: a log of an epoch that never reached its checkpoint is replaced; periodic
    # epoch_*.pt files without a last.pt are not (training then refuses the folder).
    fresh = not any((root / name).glob("epoch_*.pt"))
    train(build_config(args.preset or "paper", None, overrides), progress=not args.quiet,
          overwrite=fresh)


def _sweep_in_parallel(args: argparse.Namespace, classes: list[str], root: Path) -> None:
    """One class per GPU at a time: child processes run this verb for a single class."""
    import torch

    slots = list(range(max(1, torch.cuda.device_count())))[: args.jobs]
    pending = [c for c in classes if not _class_results_path(root, c).exists()]
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    base = [a for a in sys.argv[1:] if a != "--quiet"]
    failed = []
    while pending or running:
        for slot in [s for s in slots if s not in running and pending]:
            name = pending.pop(0)
            argv = _single_class_argv(base, name)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(slot)}
            running[slot] = (subprocess.Popen([sys.executable, "-m", "patchguard", *argv],
                                              env=env), name)
        for slot, (proc, name) in list(running.items()):
            if proc.poll() is not None:
                del running[slot]
                if proc.returncode:
                    failed.append(name)
        time.sleep(1)
    if failed:
        raise RuntimeError(f"sweep failed for class(es) {failed}; rerun to resume")


def _single_class_argv(argv: list[str], name: str) -> list[str]:
    """The same benchmark command restricted to one class and one job."""
    out, skip = [], False
    for arg in argv:
        if skip and arg.startswith("--"):
            skip = False
        if skip:
            continue
        if arg in ("--classes", "--jobs"):
            skip = True
            continue
        out.append(arg)
    return [*out, "--classes", name, "--jobs", "1", "--quiet"]


def _resolve_classes(args: argparse.Namespace, root: Path) -> list[str]:
    classes = args.classes
    if classes == ["all"] and args.train:
        from ..data.layouts import discover_classes

        if not args.dataset_dir:
            raise ValueError("benchmark --train needs --dataset-dir")
        return discover_classes(args.dataset_dir)
    if classes == ["all"]:
        classes = sorted(p.parent.name for p in root.glob("*/last.pt"))
        if not classes:
            raise FileNotFoundError(f"no <class>/last.pt under {root}")
    return classes


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Evaluate (and with --train first train) one checkpoint per class, and with --baselines
    anomalib's detectors beside it; paper-style table, JSON, CSV, plot and HTML page."""
    from ..evaluation.report.tables import (
        PATCHGUARD,
        class_means,
        class_table,
        write_csv,
        write_results,
    )
    from ..utils.files import atomic_write_text

    root = Path(args.checkpoint_dir)
    out = Path(args.output_dir or root)
    if out.exists() and not out.is_dir():  # before hours of evaluation, not after
        raise NotADirectoryError(f"--output-dir {out} is a file; give a folder")
    if args.output_dir:  # CHECKPOINT_DIR's benchmark.* are an earlier benchmark's
        from ..utils.files import refuse_foreign

        refuse_foreign([out / name for name in ("benchmark.md", "benchmark.json",
                                                "benchmark.csv", "benchmark.html",
                                                "benchmark_vs_epsilon.png")],
                       "--output-dir", args.overwrite)
    if args.jobs is None:
        import torch

        args.jobs = max(1, torch.cuda.device_count())
    classes = _resolve_classes(args, root)
    if args.train and args.jobs > 1 and len(classes) > 1:
        _sweep_in_parallel(args, classes, root)
    from .evaluate import warn_epsilon_units

    warn_epsilon_units("--epsilon-test", args.epsilon_test)
    epsilons = sorted({0.0, *args.epsilon_test})
    if args.baselines:
        from ..baselines import require_anomalib

        require_anomalib()  # before any class is evaluated, not after hours of them
    results, all_rows = {}, []
    for name in classes:
        done = _class_results_path(root, name)
        if args.train and done.exists():
            # An interrupted sweep resumes here: finished classes are read back, not redone.
            rows = [{"method": PATCHGUARD, **r} for r in json.loads(done.read_text())]
        else:
            rows = _patchguard_rows(args, name, root, out, epsilons, done)
        for baseline in args.baselines or ():
            rows += _baseline_rows(args, name, baseline, rows[0], root, epsilons)
        results[name] = rows
        all_rows.extend(rows)
    table = class_table(results)
    atomic_write_text(out / "benchmark.md", table)
    write_results(out / "benchmark.json", all_rows)
    write_csv(all_rows, out / "benchmark.csv")
    written = ["benchmark.json", "benchmark.csv"]
    if any(r["attack"] != "clean" for r in all_rows):
        from ..evaluation.report.plots import plot_auroc_vs_epsilon

        title = (f"mean over {len(results)} classes" if len(results) > 1
                 else f"class {next(iter(results))}")
        plot_auroc_vs_epsilon(class_means(all_rows), out / "benchmark_vs_epsilon.png", title)
        written.append("benchmark_vs_epsilon.png")
    from .report import write_benchmark_report

    write_benchmark_report(out, all_rows, table)
    print(table)
    print(f"written: {out / 'benchmark.md'}, {', '.join(written)}, benchmark.html")
    return 0


def _patchguard_rows(args: argparse.Namespace, name: str, root: Path, out: Path,
                     epsilons: list[float], done: Path) -> list[dict[str, Any]]:
    """One class's PatchGuard rows: train it first with --train, evaluate, keep the gallery."""
    from ..evaluation.evaluator import evaluate, load_for_evaluation
    from ..evaluation.report.tables import PATCHGUARD, format_table, write_results

    if args.train:
        _train_class(args, name, root)
    checkpoint = next((p for p in (root / name / "last.pt", root / f"{name}.pt")
                       if p.exists()), None)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint for class {name!r}: expected "
                                f"{root / name / 'last.pt'} or {root / (name + '.pt')}")
    target = load_for_evaluation(checkpoint, args.dataset, args.dataset_dir, name,
                                 args.device or "auto")
    rows = evaluate(target.model, target.test_set, attack_settings(args, epsilons),
                    device=target.device, progress=not args.quiet)
    print(f"{name}:\n{format_table(rows)}")
    if args.gallery:
        from .report import benchmark_gallery

        benchmark_gallery(args, target, out / "benchmark_gallery" / name, epsilons)
    rows = [{"method": PATCHGUARD, **r, "dataset": target.dataset, "class_name": name,
             "checkpoint": str(checkpoint), "dataset_dir": target.dataset_dir,
             "test_image_size": target.test_set.image_size} for r in rows]
    if args.train:
        write_results(done, rows)
    return rows


def baseline_rows_path(root: Path, class_name: str, baseline: str) -> Path:
    """Where a class's baseline rows are kept: ``<root>/<class>/baselines/<name>_rows.json``."""
    return root / class_name / "baselines" / f"{baseline}_rows.json"


def baseline_objective(objective: str) -> str:
    """The objective a baseline's attacks use: ``score`` where the requested one needs patch
    logits (the paper's ``mask``), which no anomalib detector has."""
    from ..adversarial.objectives import PATCH_OBJECTIVES

    return "score" if objective in PATCH_OBJECTIVES else objective


def _baseline_rows(args: argparse.Namespace, name: str, baseline: str,
                   patchguard_row: dict[str, Any], root: Path, epsilons: list[float]
                   ) -> list[dict[str, Any]]:
    """One class's rows of one baseline: trained once, evaluated once, read back on a rerun.

    The baseline is attacked on PatchGuard's test set of the class (same data set, folder and
    image size, read from PatchGuard's row) with the same attacks, epsilons and budgets.
    """
    from ..baselines import prepare_baseline
    from ..evaluation.any_detector import evaluate_detector
    from ..evaluation.report.tables import format_table, write_results
    from ..utils.device import resolve_device

    device = resolve_device(args.device or "auto")
    dataset = patchguard_row.get("dataset") or args.dataset or "mvtec"
    dataset_dir = patchguard_row.get("dataset_dir") or args.dataset_dir
    test_size = patchguard_row.get("test_image_size")
    if not dataset_dir or not test_size:  # rows of an earlier build: from the checkpoint
        from ..evaluation.evaluator import load_for_evaluation

        target = load_for_evaluation(patchguard_row["checkpoint"], args.dataset,
                                     args.dataset_dir, name, "cpu")
        dataset, dataset_dir = target.dataset, target.dataset_dir
        test_size = target.test_set.image_size
    pretrained = bool(args.baseline_pretrained)
    options: dict[str, Any] = {"pretrained": pretrained}
    if baseline == "efficient_ad":
        options["max_steps"] = args.efficient_ad_steps
    else:
        options["backbone"] = args.baseline_backbone or (None if pretrained
                                                         else OFFLINE_BACKBONE)
    under_test = prepare_baseline(baseline, dataset, dataset_dir, name, root,
                                  test_image_size=int(test_size), device=str(device),
                                  progress=not args.quiet, **options)
    label = under_test.fields["method"]
    objective = baseline_objective(args.objective)
    path = baseline_rows_path(root, name, baseline)
    meta = {**under_test.fields, "dataset": dataset, "class_name": name}
    if path.exists() and not under_test.trained_now:
        rows = json.loads(path.read_text())
        if _same_evaluation(rows, args, objective, epsilons, len(under_test.test_set), meta):
            print(f"{name}: {label} rows read back from {path}")
            return rows
    print(f"{name}: {label} ({'trained now' if under_test.trained_now else 'checkpoint read back'}"
          f", {under_test.checkpoint})")
    settings = replace(attack_settings(args, epsilons), objective=objective)
    result = evaluate_detector(under_test.detector, under_test.test_set, settings=settings,
                               device=device, progress=not args.quiet)
    print(f"{name}, {label}:\n{format_table(result.rows)}")
    note = (f"{args.objective} needs patch logits (PatchGuard's); {label} is attacked on "
            f"{objective}") if objective != args.objective else None
    rows = [{**r, **meta, **({"objective_note": note} if note and r["attack"] not in
                             ("clean", "standard") else {})} for r in result.rows]
    write_results(path, rows)
    return rows


_EVALUATION_FIELDS = ("steps", "objective", "restarts", "queries", "members")


def _same_evaluation(rows: list[dict[str, Any]], args: argparse.Namespace, objective: str,
                     epsilons: list[float], n_images: int, meta: dict[str, Any]) -> bool:
    """Whether stored baseline rows are this sweep's: same settings, model and test images."""
    from ..evaluation.evaluator import attack_fields

    settings = [("clean", 0.0)] if 0 in epsilons else []
    settings += [(a, float(e)) for a in args.attack for e in epsilons if e > 0]
    if [(r.get("attack"), r.get("epsilon")) for r in rows] != settings:
        return False
    for row, (attack, eps) in zip(rows, settings):
        expected = attack_fields(attack, replace(attack_settings(args), objective=objective),
                                 eps > 0, patch_logits=False)
        if any(row.get(k) != expected[k] for k in _EVALUATION_FIELDS):
            return False
        if row.get("n_images") != n_images or any(row.get(k) != v for k, v in meta.items()):
            return False
    return True


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"benchmark": cmd_benchmark}
