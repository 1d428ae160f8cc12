"""The ``benchmark`` verb: evaluate one checkpoint per class (training them first with
``--train``, one class per GPU at a time, resumable) and write the paper-style table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .args import EPSILON_ARG, NON_NEGATIVE, POSITIVE, attack_flags, common_flags, flag


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``patchguard`` parser."""
    from ..config import PRESETS

    bench = verbs.add_parser("benchmark", help="evaluate several classes: paper-style table")
    flag(bench, "--dataset", default=None)
    flag(bench, "--dataset-dir", default=None)
    flag(bench, "--classes", nargs="+", required=True,
         help="class names, or 'all' for every CHECKPOINT_DIR/<class>/last.pt")
    flag(bench, "--checkpoint-dir", required=True,
         help="holds <class>/last.pt (or <class>.pt) per class")
    common_flags(bench)
    flag(bench, "--epsilon-test", type=EPSILON_ARG, nargs="+", default=[0, 8],
         help="epsilons in 1/255 units, 0..255; 0 is the clean row (always included)")
    flag(bench, "--steps-test", type=POSITIVE, default=10)
    # The paper's PGD and, beside it, the fixed standard evaluation (README "Robustness
    # evaluation"); --attack pgd skips standard, which costs about 1650 clean passes per image.
    attack_flags(bench, default=("pgd", "standard"))
    flag(bench, "--batch-size", type=POSITIVE, default=16)
    flag(bench, "--output-dir", default=None, help="default: CHECKPOINT_DIR")
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


def _class_results_path(root: Path, name: str) -> Path:
    return root / name / "benchmark_rows.json"


def _train_class(args: argparse.Namespace, name: str, root: Path) -> None:
    """Train one class of a sweep, resuming a partial run; no-op when it is complete."""
    from ..config import build_config
    from ..training.checkpoints import resume_config
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
    """Evaluate (and with --train first train) one checkpoint per class; paper-style table."""
    from ..evaluation.evaluator import evaluate, load_for_evaluation
    from ..evaluation.reports import class_table, format_table, write_csv, write_results
    from ..utils.files import atomic_write_text

    root = Path(args.checkpoint_dir)
    out = Path(args.output_dir or root)
    if out.exists() and not out.is_dir():  # before hours of evaluation, not after
        raise NotADirectoryError(f"--output-dir {out} is a file; give a folder")
    if args.jobs is None:
        import torch

        args.jobs = max(1, torch.cuda.device_count())
    classes = _resolve_classes(args, root)
    if args.train and args.jobs > 1 and len(classes) > 1:
        _sweep_in_parallel(args, classes, root)
    from .evaluate import warn_epsilon_units

    warn_epsilon_units("--epsilon-test", args.epsilon_test)
    epsilons = sorted({0.0, *args.epsilon_test})
    results, all_rows = {}, []
    for name in classes:
        done = _class_results_path(root, name)
        if args.train and done.exists():
            # An interrupted sweep resumes here: finished classes are read back, not redone.
            rows = json.loads(done.read_text())
            results[name] = rows
            all_rows.extend(rows)
            continue
        if args.train:
            _train_class(args, name, root)
        checkpoint = next((p for p in (root / name / "last.pt", root / f"{name}.pt")
                           if p.exists()), None)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint for class {name!r}: expected "
                                    f"{root / name / 'last.pt'} or {root / (name + '.pt')}")
        target = load_for_evaluation(checkpoint, args.dataset, args.dataset_dir, name,
                                     args.device or "auto")
        rows = evaluate(target.model, target.test_set, epsilons, args.steps_test,
                        args.batch_size, target.device, progress=not args.quiet,
                        attacks=args.attack, objective=args.objective, restarts=args.restarts,
                        queries=args.queries)
        print(f"{name}:\n{format_table(rows)}")
        if args.gallery:
            from .report import benchmark_gallery

            benchmark_gallery(args, target, out / "benchmark_gallery" / name, epsilons)
        rows = [{**r, "dataset": target.dataset, "class_name": name,
                 "checkpoint": str(checkpoint)} for r in rows]
        if args.train:
            write_results(done, rows)
        results[name] = rows
        all_rows.extend(rows)
    table = class_table(results)
    atomic_write_text(out / "benchmark.md", table)
    write_results(out / "benchmark.json", all_rows)
    write_csv(all_rows, out / "benchmark.csv")
    from .report import write_benchmark_report

    write_benchmark_report(out, all_rows, table)
    print(table)
    print(f"written: {out / 'benchmark.md'}, benchmark.json, benchmark.csv, benchmark.html")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"benchmark": cmd_benchmark}
