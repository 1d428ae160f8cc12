"""Train one recipe on one class and print clean / PGD AUROCs as a JSON line.

Used to choose the ``fast`` preset (docs/training.md, Presets). Example:
    python benchmarks/recipe_sweep.py --class-name gravel \\
        --set '{"epochs": 6, "feature_layers": [6], "reg_layers": [2, 4, 6], "batch_size": 8}'
Without --dataset-dir the demo data set is built at 112 px (48 training images per class).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from patchguard.config import build_config
from patchguard.data.datasets import load_test_set
from patchguard.evaluation.evaluator import evaluate
from patchguard.models.factory import load_model
from patchguard.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=None)
    parser.add_argument("--class-name", default="gravel")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--set", default="{}", help="JSON object of config overrides")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0, 2, 8])
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()
    root = args.dataset_dir
    if root is None:
        from patchguard.demo_data import build_demo_dataset

        root = str(Path(tempfile.gettempdir()) / f"patchguard_demo_{args.image_size}")
        build_demo_dataset(root, image_size=args.image_size, n_train=48, n_test_good=16,
                           n_test_per_defect=4)
    overrides = json.loads(args.set)
    out = args.output_dir or tempfile.mkdtemp(prefix="patchguard_sweep_")
    config = build_config(args.preset, overrides={
        "dataset_dir": root, "class_name": args.class_name, "output_dir": out,
        "image_size": args.image_size, "val_fraction": 0.0, "workers": 1, **overrides})
    started = time.perf_counter()
    last = train(config, progress=False)
    train_s = time.perf_counter() - started
    model, _ = load_model(last)
    test_set = load_test_set(config.dataset, root, args.class_name, config.image_size)
    rows = evaluate(model, test_set, epsilons=args.epsilons, steps=10, progress=False)
    print(json.dumps({"class": args.class_name, "set": overrides, "train_s": round(train_s),
                      **{f"{r['attack']}{r['epsilon']:g}_{kind}": round(r[f'{kind}_auroc'], 3)
                         for r in rows for kind in ("image", "pixel")}}))


if __name__ == "__main__":
    main()
