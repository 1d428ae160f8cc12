"""Why a model's image AUROC falls under attack: how far the attack moves the image scores,
against how far apart the clean scores of normal and anomalous images are.

For each checkpoint, on the fixed test subset of ``robust_budget.py`` (``--n-eval`` images, half
normal), the clean scores and the scores under APGD on the ``score`` objective (normal images
pushed up, anomalous ones down) at each epsilon. Printed per model and epsilon:

- ``separation``: median clean score of the anomalous images minus that of the normal ones;
- ``spread``: the standard deviation of all clean scores (a model whose scores barely vary,
  e.g. one collapsed to a constant, cannot be moved, and cannot detect either);
- ``rise`` / ``fall``: the median change of the normal images' scores (up) and of the
  anomalous images' (down) under the attack;
- ``ratio``: (rise + fall) / separation. Above 1 the attack overturns a typical
  (normal, anomalous) pair, and the attacked AUROC heads for 0; robustness needs it below 1;
- ``clean_img`` / ``attacked_img``: the image AUROC of those clean and attacked scores.

Every row names its ``class`` and ``recipe`` (the checkpoint's run folder, as
``robust_budget.py`` lays runs out: ``OUT/runs/CLASS/RECIPE/last.pt``).

Example (docs/robustness-study.md, "Why the scores give way"):
    OMP_NUM_THREADS=1 python benchmarks/score_shift.py RUN_A/last.pt RUN_B/last.pt \\
        --dataset-dir DEMO112 --class-name gravel
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from patchguard.evaluation.evaluator import predict_dataset
from patchguard.evaluation.metrics import auroc
from patchguard.models.factory import load_model
from robust_budget import eval_subset  # the same fixed test subset as the budget curves


def score_shift(checkpoint: str, dataset_dir: str, class_name: str, n_eval: int,
                epsilons: list[float], steps: int) -> list[dict]:
    """One row per epsilon: separation, spread, rise, fall and ratio of one model."""
    model, _ = load_model(checkpoint, torch.device("cpu"))
    data = eval_subset(dataset_dir, class_name, model.image_size, n_eval)

    def scores(eps: float) -> tuple[np.ndarray, np.ndarray]:
        preds = predict_dataset(model, data, eps, steps, batch_size=len(data),
                                progress=False, attack="apgd" if eps else "pgd",
                                objective="score", seed=0)
        return np.asarray(preds.labels).astype(bool), np.asarray(preds.scores, dtype=float)

    anomalous, clean = scores(0.0)
    separation = float(np.median(clean[anomalous]) - np.median(clean[~anomalous]))
    rows = []
    for eps in epsilons:
        _, attacked = scores(eps)
        rise = float(np.median(attacked[~anomalous] - clean[~anomalous]))
        fall = float(np.median(clean[anomalous] - attacked[anomalous]))
        rows.append({
            "class": class_name, "recipe": Path(checkpoint).parent.name,
            "checkpoint": checkpoint, "epsilon": eps, "steps": steps, "n_eval": len(data),
            "separation": round(separation, 3), "spread": round(float(clean.std()), 3),
            "rise": round(rise, 3), "fall": round(fall, 3),
            "ratio": round((rise + fall) / separation, 2) if separation > 0 else None,
            "clean_img": round(float(auroc(anomalous, clean)), 4),
            "attacked_img": round(float(auroc(anomalous, attacked)), 4),
        })
    return rows


def main() -> None:
    """Print a table, then the rows as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--class-name", required=True)
    parser.add_argument("--n-eval", type=int, default=12)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0])
    parser.add_argument("--steps", type=int, default=50, help="APGD steps (score objective)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for path in args.checkpoints for row in score_shift(
        path, args.dataset_dir, args.class_name, args.n_eval, args.epsilons, args.steps)]
    print("| checkpoint | eps | separation | spread | rise | fall | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['epsilon']:g} | {r['separation']:.2f} | "
              f"{r['spread']:.2f} | {r['rise']:+.2f} | {r['fall']:+.2f} | {r['ratio']} |")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
