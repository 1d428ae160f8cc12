"""bf16 training (``--bf16``) against fp32: clean and attacked AUROC over seeds, and the time.

On one demo class (``patchguard.demo.dataset``) it trains one adversarially trained checkpoint
per seed and precision (the ``fast`` preset with ``adv_train``; ``--backbone test_vit`` at
64 px by default, a tiny budget), then evaluates each in fp32 (the evaluation attacks stay fp32)
on the whole test set with its pixel masks: clean, and ``standard`` with the demo's bounded
members at ``--epsilon``. It prints one line per checkpoint, then per precision the mean and
spread (min..max) of each AUROC over the seeds and the median training CPU seconds.

    OMP_NUM_THREADS=1 taskset -c 0 env PYTHONPATH=src python benchmarks/bench_bf16.py \\
        --out /tmp/bench_bf16 --classes gravel --seeds 0 1 2 --epochs 20

The training time is CPU time of one process per run, not a side-by-side ratio; on a CPU
without native bf16 (AVX2 only) bf16 is expected to be slower.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from patchguard.adversarial.settings import AttackSettings
from patchguard.data.datasets import load_test_set
from patchguard.evaluation.evaluator import evaluate

METRICS = ("image_auroc", "pixel_auroc")


def _train(root: Path, out: Path, args: argparse.Namespace, seed: int, bf16: bool
           ) -> tuple[Path, float]:
    """One adversarially trained checkpoint; its path and the training CPU seconds."""
    from patchguard.api import train

    run = out / "runs" / f"{'bf16' if bf16 else 'fp32'}-seed{seed}"
    overrides: dict[str, Any] = dict(
        preset="fast", dataset="mvtec", dataset_dir=str(root), class_name=args.classes[0],
        output_dir=str(run), image_size=args.image_size, adv_train=True, device="cpu",
        workers=0, val_fraction=0.0, epochs=args.epochs, seed=seed, bf16=bf16)
    if args.backbone:
        overrides.update(backbone=args.backbone, pretrained=False, feature_layers=[3],
                         reg_layers=[2, 3], reg_coefficients=[0.01, 0.05], dsc_hidden=64)
    started = time.process_time()
    path = train(progress=False, overwrite=True, **overrides)
    return path, time.process_time() - started


def main() -> None:
    """Train per seed and precision, evaluate in fp32, print AUROCs and their spread."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the demo data and runs")
    parser.add_argument("--classes", nargs=1, default=["gravel"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="test_vit",
                        help="random-init backbone (empty: the fast preset's pretrained one)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilon", type=float, default=8.0, help="in 1/255")
    args = parser.parse_args()
    logging.getLogger("patchguard").setLevel(logging.ERROR)
    from patchguard.demo.dataset import build_demo_dataset
    from patchguard.demo.run import DEMO_STANDARD
    from patchguard.models.factory import load_model

    out = Path(args.out)
    root = out / "data"
    build_demo_dataset(root, classes=args.classes, image_size=args.image_size)
    test_set = load_test_set("mvtec", root, args.classes[0], args.image_size)
    settings = AttackSettings(attacks=("standard",), epsilons=(0, args.epsilon),
                              standard_members=DEMO_STANDARD["members"])
    results: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
    print(f"class {args.classes[0]}, {len(test_set)} test images, {args.image_size} px, "
          f"backbone {args.backbone or 'fast preset'}, {args.epochs} epochs, standard (demo "
          f"members) at {args.epsilon:g}/255, evaluated in fp32")
    for seed in args.seeds:
        for bf16 in (False, True):  # alternating, so load drifts hit both alike
            path, seconds = _train(root, out, args, seed, bf16)
            model, _ = load_model(path, torch.device("cpu"))
            clean, attacked = evaluate(model, test_set, settings, progress=False)
            row = {"clean_" + m: clean[m] for m in METRICS}
            row.update({"standard_" + m: attacked[m] for m in METRICS})
            row["train_cpu_s"] = seconds
            name = "bf16" if bf16 else "fp32"
            results[name].append(row)
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()),
                  flush=True)
    for name, rows in results.items():
        parts = []
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key == "train_cpu_s":
                parts.append(f"train CPU s median {statistics.median(values):.1f}")
            else:
                parts.append(f"{key} {statistics.mean(values):.3f} "
                             f"({min(values):.3f}..{max(values):.3f})")
        print(f"{name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
