"""``standard`` with and without exact early stopping, side by side: passes and images/s.

On demo data (``patchguard.demo.dataset``), it trains small checkpoints (undefended and
adversarially trained, a few epochs each; or takes ``--checkpoints``), then evaluates
``standard`` on each test set alternately with early stopping on and off (``--rounds`` times,
the order swapped every round, after one attacked warm-up evaluation), and prints per
checkpoint: the model passes per image, their ratio, the speed-up in CPU seconds (median off
over median on: steadier than wall time on a shared core) and in wall-clock images/s, and
whether the rows (every metric and setting field) are identical.

Early stopping only engages without pixel metrics (see docs/evaluation-speed.md), so the test
set is given without its pixel masks; ``--with-masks`` shows the masked case (no change).

    OMP_NUM_THREADS=1 taskset -c 1 env PYTHONPATH=src python benchmarks/bench_standard.py \\
        --out /tmp/bench_standard --image-size 64 --backbone test_vit --epochs 4
    ... --image-size 112 --backbone "" --epochs 0 --adv-preset robust-advtrain --members demo \\
        --epsilons 2 8 --classes grass

With ``--reference-src DIR`` (another checkout's ``src``, e.g. main's) it times instead this
tree against that one, both with early stopping as each does by default, each evaluation in a
fresh process with its own ``patchguard`` (alternating, CPU seconds of the evaluation alone,
medians), and says whether the rows are identical: the savings that do not depend on early
stopping, e.g. with ``--with-masks``.

    git archive main src | tar -x -C /tmp/main_tree
    OMP_NUM_THREADS=1 taskset -c 0 env PYTHONPATH=src python benchmarks/bench_standard.py \\
        --out /tmp/bench_standard --image-size 112 --backbone "" --members demo --with-masks \\
        --checkpoints RUN/undefended/last.pt RUN/adversarial/last.pt --classes grass \\
        --reference-src /tmp/main_tree/src

Speed figures are ratios from one run (alternating, medians); absolute times depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from patchguard.adversarial.settings import AttackSettings
from patchguard.adversarial.standard import STANDARD_MEMBERS, Member
from patchguard.data.datasets import TensorTestSet, load_test_set
from patchguard.evaluation.evaluator import evaluate

# --members demo: the bounded members the demo ran until it ran the citable standard.
BOUNDED_MEMBERS = (Member("apgd", "score", steps=20), Member("apgd", "map", steps=20),
                   Member("pgd", "mask", steps=10), Member("square", "score", queries=100))

DIAGNOSTIC = ("seconds", "images_per_s", "passes_per_image", "image_worst_from",
              "pixel_worst_from")


def _train(root: Path, out: Path, class_name: str, args: argparse.Namespace,
           adversarial: bool) -> Path:
    """A small checkpoint on the demo class (``fast`` preset, few epochs)."""
    from patchguard.api import train

    run = out / "runs" / class_name / ("adversarial" if adversarial else "undefended")
    if (run / "last.pt").exists():
        return run / "last.pt"
    overrides: dict[str, Any] = dict(
        preset=args.adv_preset if adversarial else "fast", dataset="mvtec",
        dataset_dir=str(root), class_name=class_name, output_dir=str(run),
        image_size=args.image_size, adv_train=adversarial, device="cpu", workers=0,
        val_fraction=0.0)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.backbone:
        overrides.update(backbone=args.backbone, pretrained=False, feature_layers=[3],
                         reg_layers=[2, 3], reg_coefficients=[0.01, 0.05], dsc_hidden=64)
    return train(progress=False, overwrite=True, **overrides)


def _test_set(root: Path, class_name: str, size: int, limit: int, with_masks: bool):
    """Up to ``limit`` test images, normal and anomalous alternating; masks only if asked."""
    full = load_test_set("mvtec", root, class_name, size)
    normal = [i for i, r in enumerate(full.records) if r.label == 0]
    anomalous = [i for i, r in enumerate(full.records) if r.label == 1]
    chosen = [i for pair in zip(normal, anomalous) for i in pair][:limit]
    samples = [full[i] for i in chosen]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.tensor([int(s["label"]) for s in samples])
    masks = torch.stack([s["mask"][0] for s in samples]) if with_masks else None
    return TensorTestSet(images, labels, masks)


def _metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in DIAGNOSTIC} for r in rows]


def _settings(args: argparse.Namespace, members: Any, eps: float) -> AttackSettings:
    return AttackSettings(attacks=("standard",), epsilons=(0, eps), standard_members=members,
                          batch_size=args.batch_size, seed=args.seed)


def _worker(job: dict[str, Any]) -> None:
    """One evaluation in this process's patchguard: its CPU seconds and rows, as JSON."""
    from patchguard.models.factory import load_model

    logging.getLogger("patchguard").setLevel(logging.ERROR)
    args = argparse.Namespace(**job["args"])
    members = BOUNDED_MEMBERS if args.members == "demo" else STANDARD_MEMBERS
    model, _ = load_model(Path(job["checkpoint"]), torch.device("cpu"))
    data = _test_set(Path(args.out) / "data", job["class_name"], args.image_size, args.images,
                     args.with_masks)
    started = time.process_time()
    rows = evaluate(model, data, _settings(args, members, job["eps"]), progress=False)
    print(json.dumps({"cpu_seconds": time.process_time() - started, "rows": rows}))


def _against(args: argparse.Namespace, targets: list[tuple[str, Path, str]]) -> None:
    """This tree against ``--reference-src``, alternating fresh processes; CPU-second medians."""
    trees = {"reference": Path(args.reference_src).resolve(),
             "this tree": Path(__file__).resolve().parents[1] / "src"}
    print(f"{'checkpoint':<28} {'eps':>4} {'ref CPU s':>9} {'this':>7} {'speed-up':>8} "
          f"{'per round':>9} identical")
    for label, path, name in targets:
        for eps in args.epsilons:
            job = {"args": vars(args), "checkpoint": str(path), "class_name": name, "eps": eps}
            seconds: dict[str, list[float]] = {t: [] for t in trees}
            rows: dict[str, Any] = {}
            for round_ in range(args.rounds):
                order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
                for tree in order:
                    env = {**os.environ, "PYTHONPATH": str(trees[tree])}
                    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                                         env=env, check=True, capture_output=True, text=True)
                    reply = json.loads(out.stdout.strip().splitlines()[-1])
                    seconds[tree].append(reply["cpu_seconds"])
                    rows[tree] = reply["rows"]
            ref, this = (statistics.median(seconds[t]) for t in trees)
            paired = statistics.median(a / b for a, b in zip(*seconds.values()))
            same = _metrics(rows["reference"]) == _metrics(rows["this tree"])
            print(f"{name + '/' + label:<28} {eps:>4g} {ref:>9.1f} {this:>7.1f} "
                  f"{ref / this:>7.3f}x {paired:>8.3f}x {same}", flush=True)


def main() -> None:
    """Train or take checkpoints; time standard with and without early stopping."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the demo data and runs")
    parser.add_argument("--classes", nargs="+", default=["gravel"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="test_vit",
                        help="random-init backbone (empty: the fast preset's pretrained one)")
    parser.add_argument("--epochs", type=int, default=4, help="0: the preset's")
    parser.add_argument("--adv-preset", default="fast",
                        help="preset of the adversarially trained checkpoint (e.g. robust)")
    parser.add_argument("--checkpoints", nargs="*", default=None,
                        help="evaluate these instead of training (first class's data)")
    parser.add_argument("--images", type=int, default=12, help="test images per checkpoint")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0], help="in 1/255")
    parser.add_argument("--members", choices=["standard", "demo"], default="standard")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-masks", action="store_true")
    parser.add_argument("--reference-src", default=None,
                        help="time this tree against that src folder instead (see above)")
    args = parser.parse_args()
    # The no-pixel-masks warning is this benchmark's own choice (early stopping needs it).
    logging.getLogger("patchguard").setLevel(logging.ERROR)
    torch.manual_seed(0)
    out = Path(args.out)
    root = out / "data"
    from patchguard.demo.dataset import build_demo_dataset

    build_demo_dataset(root, classes=args.classes, image_size=args.image_size)
    members = STANDARD_MEMBERS
    if args.members == "demo":
        members = BOUNDED_MEMBERS
    targets: list[tuple[str, Path, str]] = []
    if args.checkpoints:
        targets = [(Path(c).parent.name, Path(c), args.classes[0]) for c in args.checkpoints]
    else:
        for name in args.classes:
            for adversarial in (False, True):
                started = time.perf_counter()
                path = _train(root, out, name, args, adversarial)
                print(f"trained {path} in {time.perf_counter() - started:.0f} s", flush=True)
                targets.append(("adversarial" if adversarial else "undefended", path, name))
    from patchguard.models.factory import load_model

    if args.reference_src:
        _against(args, targets)
        return
    print(f"standard members: {', '.join(m.describe() for m in members)}; "
          f"{torch.get_num_threads()} thread(s); pixel masks "
          f"{'kept' if args.with_masks else 'left out'}")
    print(f"{'checkpoint':<28} {'eps':>4} {'passes/img on':>13} {'off':>8} {'saved':>6} "
          f"{'CPU speed-up':>12} {'img/s ratio':>11} {'AUROC clean':>11} {'attacked':>9} "
          f"identical")
    for label, path, name in targets:
        model, _ = load_model(path, torch.device("cpu"))
        data = _test_set(root, name, args.image_size, args.images, args.with_masks)
        for eps in args.epsilons:
            settings = _settings(args, members, eps)
            # Warm-up: the clean pass (cached for every later evaluation) and one attacked
            # evaluation, so that first-run costs (allocator, autograd) hit neither side.
            evaluate(model, data, settings, progress=False, early_stop=False)
            speed: dict[bool, list[float]] = {True: [], False: []}
            cpu: dict[bool, list[float]] = {True: [], False: []}
            rows: dict[bool, list[dict[str, Any]]] = {}
            for round_ in range(args.rounds):
                # alternating, the order swapped every round, so drifts hit both alike
                for early in ((True, False) if round_ % 2 == 0 else (False, True)):
                    started = time.process_time()
                    result = evaluate(model, data, settings, progress=False, early_stop=early)
                    cpu[early].append(time.process_time() - started)
                    speed[early].append(result[1]["images_per_s"])
                    rows[early] = result
            on, off = rows[True][1], rows[False][1]
            ratio = statistics.median(speed[True]) / statistics.median(speed[False])
            cpu_ratio = statistics.median(cpu[False]) / statistics.median(cpu[True])
            saved = 1 - on["passes_per_image"] / off["passes_per_image"]
            same = _metrics(rows[True]) == _metrics(rows[False])
            print(f"{name + '/' + label:<28} {eps:>4g} {on['passes_per_image']:>13.1f} "
                  f"{off['passes_per_image']:>8.1f} {saved:>6.1%} {cpu_ratio:>11.3f}x "
                  f"{ratio:>10.2f}x "
                  f"{rows[True][0]['image_auroc']:>11.3f} {on['image_auroc']:>9.3f} {same}",
                  flush=True)

if __name__ == "__main__":
    main()
