"""Command-line interface: ``patchguard train | test | visualize | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, cli_data, cli_tools

logger = logging.getLogger("patchguard")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add ``--some-flag`` and the original's ``--some_flag`` spelling as an alias."""
    names = [name]
    if "-" in name[2:]:
        names.append("--" + name[2:].replace("-", "_"))
    parser.add_argument(*names, **kwargs)


def _data_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    _flag(parser, "--dataset", default=None, help="data set layout (default: mvtec, or the "
          "checkpoint's)")
    _flag(parser, "--dataset-dir", default=None, required=required,
          help="root folder holding one folder per class")
    _flag(parser, "--class-name", default=None, required=required, help="class folder name")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--config", default=None, help="YAML file of option: value (CLI flags win)")
    _flag(parser, "--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    _flag(parser, "--quiet", action="store_true", default=None, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="patchguard",
        description="Adversarially robust anomaly detection and localization (PatchGuard).",
    )
    parser.add_argument("--version", action="version", version=f"patchguard {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train one class (writes OUTPUT_DIR/last.pt)")
    _data_flags(train, required=False)
    _common_flags(train)
    _flag(train, "--output-dir", default=None, help="where checkpoints and logs go")
    _flag(train, "--preset", default=None, choices=["paper", "fast"],
          help="paper: METHOD.md exactly (default); fast: short budgets")
    _flag(train, "--epochs", type=int, default=None)
    _flag(train, "--batch-size", type=int, default=None)
    _flag(train, "--image-size", type=int, default=None)
    _flag(train, "--lr", type=float, default=None)
    _flag(train, "--backbone-lr", type=float, default=None,
          help="separate backbone learning rate (default: same as --lr); 0 freezes it")
    _flag(train, "--warmup-epochs", type=int, default=None)
    _flag(train, "--backbone", default=None, help="timm ViT name")
    _flag(train, "--backbone-weights", default=None,
          help="local backbone weights (timm keys, .safetensors or .pth)")
    _flag(train, "--no-pretrained", dest="pretrained", action="store_const", const=False,
          default=None, help="random initialisation, like the original code")
    _flag(train, "--feature-layers", type=int, nargs="+", default=None)
    _flag(train, "--reg-layers", type=int, nargs="+", default=None)
    _flag(train, "--reg-coefficients", type=float, nargs="+", default=None,
          help="one KL weight per regularised layer (default 0.005 0.01 0.05)")
    _flag(train, "--epsilon-train", type=float, default=None, help="in 1/255 units")
    _flag(train, "--steps-train", type=int, default=None)
    _flag(train, "--no-adv-train", dest="adv_train", action="store_const", const=False,
          default=None)
    _flag(train, "--no-reg", dest="reg", action="store_const", const=False, default=None)
    _flag(train, "--bf16", action="store_const", const=True, default=None,
          help="bf16 autocast (for GPUs; runs slower on CPUs)")
    _flag(train, "--val-fraction", type=float, default=None,
          help="hold out this share of train images to set decision thresholds (fast: 0.1)")
    _flag(train, "--target-fpr", type=float, default=None,
          help="false-positive rate on held-out normal images for the thresholds (0.01)")
    _flag(train, "--auto-foreground", action="store_const", const=True, default=None,
          help="generate foreground masks for classes without them (fast preset: on)")
    _flag(train, "--compile", action="store_const", const=True, default=None,
          help="torch.compile the backbone blocks that are not regularised")
    _flag(train, "--seed", type=int, default=None)
    _flag(train, "--workers", type=int, default=None)
    _flag(train, "--save-every", type=int, default=None)
    _flag(train, "--resume", nargs="?", const="auto", default=None,
          help="continue from a checkpoint (default OUTPUT_DIR/last.pt)")

    test = verbs.add_parser("test", help="evaluate a checkpoint clean and under PGD")
    _flag(test, "--checkpoint", required=True)
    _data_flags(test, required=False)
    _common_flags(test)
    _flag(test, "--epsilon-test", type=float, nargs="+", default=[0, 8],
          help="epsilons in 1/255 units; 0 is the clean row (always included)")
    _flag(test, "--steps-test", type=int, default=10)
    _flag(test, "--attack", nargs="+", default=["pgd"],
          choices=["pgd", "pgd-rs", "fgsm", "apgd", "worst"],
          help="attacks to run (pgd = the paper's, the default; worst = per-image strongest)")
    _flag(test, "--objective", default="mask", choices=["mask", "score", "map"],
          help="what the attack maximises: mask (paper), score (the image decision), map")
    _flag(test, "--restarts", type=int, default=1, help="random restarts (pgd-rs, apgd)")
    _flag(test, "--batch-size", type=int, default=16)
    _flag(test, "--workers", type=int, default=0)
    _flag(test, "--json", default=None, help="results file (default: beside the checkpoint)")
    _flag(test, "--no-record", action="store_true", default=None,
          help="do not store the results in the checkpoint's model card")
    _flag(test, "--sanity", action="store_true", default=None,
          help="also check for gradient masking: epsilon sweep, more steps, eps 128/255")

    bench = verbs.add_parser("benchmark", help="evaluate several classes: paper-style table")
    _flag(bench, "--dataset", default=None)
    _flag(bench, "--dataset-dir", default=None)
    _flag(bench, "--classes", nargs="+", required=True,
          help="class names, or 'all' for every CHECKPOINT_DIR/<class>/last.pt")
    _flag(bench, "--checkpoint-dir", required=True,
          help="holds <class>/last.pt (or <class>.pt) per class")
    _common_flags(bench)
    _flag(bench, "--epsilon-test", type=float, nargs="+", default=[0, 8])
    _flag(bench, "--steps-test", type=int, default=10)
    _flag(bench, "--attack", nargs="+", default=["pgd"],
          choices=["pgd", "pgd-rs", "fgsm", "apgd", "worst"])
    _flag(bench, "--objective", default="mask", choices=["mask", "score", "map"])
    _flag(bench, "--restarts", type=int, default=1)
    _flag(bench, "--batch-size", type=int, default=16)
    _flag(bench, "--output-dir", default=None, help="default: CHECKPOINT_DIR")
    _flag(bench, "--train", action="store_true", default=False,
          help="train every class first (skipping finished ones, resuming partial ones)")
    _flag(bench, "--preset", default=None, choices=["paper", "fast"], help="with --train")
    _flag(bench, "--epochs", type=int, default=None, help="with --train")
    _flag(bench, "--image-size", type=int, default=None, help="with --train")
    _flag(bench, "--workers", type=int, default=None, help="with --train")
    _flag(bench, "--jobs", type=int, default=None,
          help="classes trained at once, one per GPU (default: the number of GPUs, or 1)")

    vis = verbs.add_parser("visualize", help="clean and attacked heatmaps as PNGs")
    _flag(vis, "--checkpoint", required=True)
    _data_flags(vis, required=False)
    _common_flags(vis)
    _flag(vis, "--epsilon", type=float, default=8.0, help="in 1/255 units; 0 for clean only")
    _flag(vis, "--steps", type=int, default=10)
    _flag(vis, "--attack", default="pgd", choices=["pgd", "pgd-rs", "fgsm", "apgd", "worst"])
    _flag(vis, "--objective", default="mask", choices=["mask", "score", "map"])
    _flag(vis, "--output-dir", default=None, help="default: <checkpoint dir>/visualization")
    _flag(vis, "--max-images", type=int, default=None, help="limit the number of test images")
    _flag(vis, "--batch-size", type=int, default=16)

    demo = verbs.add_parser("demo", help="offline demo: build data, train, attack, report")
    _common_flags(demo)
    _flag(demo, "--output-dir", default="patchguard_demo")
    _flag(demo, "--classes", nargs="+", default=None, help="subset of the demo classes")
    _flag(demo, "--epochs", type=int, default=None)
    _flag(demo, "--image-size", type=int, default=None)
    _flag(demo, "--no-compare", action="store_true", default=None,
          help="skip the --no-adv-train comparison run")
    cli_tools.register(verbs)
    cli_data.register(verbs)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then re-parse with a YAML config's values as defaults (explicit flags still win)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from .config import load_yaml

        values = load_yaml(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.verb]  # noqa: SLF001
        known = {action.dest for action in sub._actions}  # noqa: SLF001
        unknown = sorted(set(values) - known - {"preset"} - _train_only_keys(args.verb))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) for '{args.verb}': {unknown}")
        sub.set_defaults(**{k: v for k, v in values.items() if k in known})
        args = parser.parse_args(argv)
        args.yaml_extra = {k: v for k, v in values.items() if k not in known}
    return args


def _train_only_keys(verb: str) -> set[str]:
    """Config keys settable from YAML for train that have no CLI flag (advanced settings)."""
    if verb not in ("train", "benchmark"):
        return set()
    import dataclasses

    from .config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def cmd_train(args: argparse.Namespace) -> int:
    """Train one class."""
    from .config import TrainConfig, build_config
    from .training import resume_config, train

    skip = {"verb", "config", "quiet", "resume", "yaml_extra"}
    overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    overrides.update(getattr(args, "yaml_extra", {}))
    resume = None
    if args.resume:
        output_dir = overrides.get("output_dir", TrainConfig.output_dir)
        resume = Path(output_dir) / "last.pt" if args.resume == "auto" else Path(args.resume)
        if not resume.exists():
            raise FileNotFoundError(f"--resume: {resume} does not exist")
        # Resume continues the saved run: only the flags given now change it.
        overrides.setdefault("output_dir", str(resume.parent))
        config = resume_config(resume, overrides)
    else:
        config = build_config(overrides.get("preset") or "paper", None, overrides)
        if not config.dataset_dir or not config.class_name:
            raise ValueError(
                "train needs --dataset-dir and --class-name (or a --config holding them)"
            )
    last = train(config, resume=resume, progress=not args.quiet)
    print(f"checkpoint: {last}")
    print(f"next: patchguard test --checkpoint {last}")
    return 0


def _write_reports(json_path: Path, rows: list, notes: str = "") -> None:
    from .reports import plot_auroc_vs_epsilon, write_csv, write_markdown

    write_csv(rows, json_path.with_suffix(".csv"))
    write_markdown(rows, json_path.with_suffix(".md"), notes)
    if any(r["attack"] != "clean" for r in rows):
        plot_auroc_vs_epsilon(rows, json_path.with_name(json_path.stem + "_vs_epsilon.png"))
    print(f"reports: {json_path.with_suffix('.csv')}, {json_path.with_suffix('.md')}")


def _run_sanity(args: argparse.Namespace, model, test_set, device) -> str:
    """Run the gradient-masking checks, print them, return them as Markdown notes."""
    from .sanity import sanity_check

    report = sanity_check(model, test_set, attack=args.attack[0], objective=args.objective,
                          steps=args.steps_test, batch_size=args.batch_size, device=device,
                          progress=not args.quiet)
    lines = ["Sanity checks against gradient masking:"]
    lines += [f"- checked: {check}" for check in report.checks]
    lines += [f"- WARNING: {warning}" for warning in report.warnings] or ["- all passed"]
    print("\n".join(lines))
    return "\n".join(lines)


def _class_results_path(root: Path, name: str) -> Path:
    return root / name / "benchmark_rows.json"


def _train_class(args: argparse.Namespace, name: str, root: Path) -> None:
    """Train one class of a sweep, resuming a partial run; no-op when it is complete."""
    from .checkpoint import load_checkpoint
    from .config import build_config
    from .training import resume_config, train

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
    train(build_config(args.preset or "paper", None, overrides), progress=not args.quiet)


def _sweep_in_parallel(args: argparse.Namespace, classes: list[str], root: Path) -> None:
    """One class per GPU at a time: child processes run this verb for a single class."""
    import os
    import subprocess
    import sys

    import torch

    slots = list(range(max(1, torch.cuda.device_count())))[: args.jobs]
    pending = [c for c in classes if not _class_results_path(root, c).exists()]
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    base = [a for a in sys.argv[1:] if a != "--quiet"]
    failed = []
    import time

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


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Evaluate (and with --train first train) one checkpoint per class; paper-style table."""
    from .config import TrainConfig
    from .data import TestDataset, load_records
    from .evaluation import evaluate, format_table, write_results
    from .reports import class_table, write_csv
    from .training import load_model, resolve_device

    root = Path(args.checkpoint_dir)
    if args.jobs is None:
        import torch

        args.jobs = max(1, torch.cuda.device_count())
    classes = args.classes
    if classes == ["all"] and args.train:
        from .layouts import discover_classes

        if not args.dataset_dir:
            raise ValueError("benchmark --train needs --dataset-dir")
        classes = discover_classes(args.dataset_dir)
    elif classes == ["all"]:
        classes = sorted(p.parent.name for p in root.glob("*/last.pt"))
        if not classes:
            raise FileNotFoundError(f"no <class>/last.pt under {root}")
    if args.train and args.jobs > 1 and len(classes) > 1:
        _sweep_in_parallel(args, classes, root)
    device = resolve_device(args.device or "auto")
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
        model, state = load_model(checkpoint, device)
        config = TrainConfig.from_dict(state["config"])
        dataset = args.dataset or config.dataset
        records = load_records(dataset, args.dataset_dir or config.dataset_dir, name, "test")
        rows = evaluate(model, TestDataset(records, config.image_size), epsilons,
                        args.steps_test, args.batch_size, device, progress=not args.quiet,
                        attacks=args.attack, objective=args.objective, restarts=args.restarts)
        print(f"{name}:\n{format_table(rows)}")
        rows = [{**r, "dataset": dataset, "class_name": name, "checkpoint": str(checkpoint)}
                for r in rows]
        if args.train:
            write_results(done, rows)
        results[name] = rows
        all_rows.extend(rows)
    out = Path(args.output_dir or root)
    table = class_table(results)
    from .checkpoint import atomic_write_text

    atomic_write_text(out / "benchmark.md", table)
    write_results(out / "benchmark.json", all_rows)
    write_csv(all_rows, out / "benchmark.csv")
    print(table)
    print(f"written: {out / 'benchmark.md'}, benchmark.json, benchmark.csv")
    return 0


def _load_for_eval(args: argparse.Namespace):
    from .config import TrainConfig
    from .data import TestDataset, load_records
    from .training import load_model, resolve_device

    device = resolve_device(args.device or "auto")
    model, state = load_model(args.checkpoint, device)
    config = TrainConfig.from_dict(state["config"])
    dataset = args.dataset or config.dataset
    dataset_dir = args.dataset_dir or config.dataset_dir
    class_name = args.class_name or config.class_name
    records = load_records(dataset, dataset_dir, class_name, "test")
    return model, device, TestDataset(records, config.image_size), dataset, class_name, state


def cmd_test(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint; print the table and write the JSON rows."""
    from .evaluation import evaluate, format_table, write_results

    model, device, test_set, dataset, class_name, state = _load_for_eval(args)
    epsilons = sorted({0.0, *args.epsilon_test})
    rows = evaluate(model, test_set, epsilons, args.steps_test, args.batch_size, device,
                    args.workers, progress=not args.quiet, attacks=args.attack,
                    objective=args.objective, restarts=args.restarts)
    print(format_table(rows))
    json_path = Path(args.json or Path(args.checkpoint).with_name("results.json"))
    meta = {"dataset": dataset, "class_name": class_name, "checkpoint": str(args.checkpoint)}
    notes = ""
    if args.sanity:
        notes = _run_sanity(args, model, test_set, device)
    write_results(json_path, rows, meta)
    _write_reports(json_path, [{**row, **meta} for row in rows], notes)
    if not args.no_record:
        # The model card carries its latest evaluation (atomic rewrite of the checkpoint; the
        # dict loaded for evaluation is reused rather than read from disk a second time).
        from .checkpoint import save_checkpoint

        state["results"] = [{**row, **meta} for row in rows]
        save_checkpoint(args.checkpoint, state)
    print(f"results: {json_path}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """Write heatmap panels and a contact sheet for the test images."""
    from .evaluation import predict_dataset
    from .visualization import save_panels

    model, device, test_set, _, _, _ = _load_for_eval(args)
    if args.max_images is not None and args.max_images < len(test_set):
        # An even spread keeps every defect type in view.
        step = len(test_set) / args.max_images
        indices = [int(i * step) for i in range(args.max_images)]
        test_set.records = [test_set.records[i] for i in indices]
    progress = not args.quiet
    clean = predict_dataset(model, test_set, 0.0, batch_size=args.batch_size, device=device,
                            keep_images=True, progress=progress, desc="clean")
    adv = None
    if args.epsilon > 0:
        adv = predict_dataset(model, test_set, args.epsilon, args.steps, args.batch_size, device,
                              keep_images=True, progress=progress, attack=args.attack,
                              objective=args.objective,
                              desc=f"{args.attack} eps {args.epsilon:g}/255")
    out_dir = Path(args.output_dir or Path(args.checkpoint).parent / "visualization")
    written = save_panels(
        clean.images, clean.maps, clean.masks, clean.paths, out_dir,
        adv.images if adv else None, adv.maps if adv else None,
        clean.scores, adv.scores if adv else None,
    )
    print(f"wrote {len(written) - 1} panels and the contact sheet {written[-1]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo."""
    from .demo import run_demo

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


COMMANDS = {"train": cmd_train, "test": cmd_test, "visualize": cmd_visualize, "demo": cmd_demo,
            "benchmark": cmd_benchmark}
COMMANDS.update(cli_tools.COMMANDS)
COMMANDS.update(cli_data.COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchguard`` command; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="patchguard: %(message)s")
    logging.getLogger("timm").setLevel(logging.WARNING)  # its INFO lines repeat ours
    from .data import DatasetError

    try:
        args = parse_args(argv)
        return COMMANDS[args.verb](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (DatasetError, ValueError, ImportError, ArithmeticError, OSError) as error:
        # OSError covers missing files and unwritable output folders alike.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            print("error: the GPU ran out of memory; lower --batch-size or add --bf16",
                  file=sys.stderr)
            return 2
        if type(error).__name__ == "BackboneWeightsError":
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
