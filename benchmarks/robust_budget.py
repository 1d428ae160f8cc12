"""What each training budget buys in robustness: train recipes on one demo class, checkpoint
along the way, evaluate every checkpoint clean, under the faithful PGD-10 (mask objective) and
under the strongest attack available, at 2/255 and 8/255; JSON lines plus a plot of AUROC
against training CPU minutes.

Example (one core, one thread; docs/robustness-study.md lists the runs made):
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/robust_budget.py \\
        --dataset-dir /tmp/demo112 --class-name gravel --recipe fast --epochs 16 \\
        --eval-at 0.5 1 --n-eval 12 --out /tmp/budget
    python benchmarks/robust_budget.py --out /tmp/budget --plot-only
    python benchmarks/robust_budget.py --plot-only --plot benchmarks/results/robust_features.png \\
        --rows benchmarks/results/robust_features.jsonl benchmarks/results/robust_classes.jsonl \\
        benchmarks/results/robust_budget.jsonl --recipe knn knn-rb4 knn-rb8 dsc-rb4 robust \\
        robust-noadv      # one row of panels per class; --recipe keeps those recipes' rows

Budgets: ``--epochs`` sets the run's length (its cosine schedule spans it); checkpoints are kept
at the ``--eval-at`` fractions of it, so an intermediate point is part of a longer schedule
(learning rate not yet annealed), not a run of that length. The x axis is the training
process's CPU time (``cpu_seconds`` of train_log.jsonl, the probe excluded), at one thread
about its wall time on an idle core. Without --dataset-dir the demo data are built at 112 px.

The strong attack (``--attack``): ``standard`` when :data:`patchguard.adversarial.attacks.ATTACKS`
has it (its own members and budgets; ``strong_steps`` then records its APGD steps), else APGD
with the ``score`` objective (the image decision), 50 steps, one restart (``--attack apgd``
forces that one).
Every row records the attack, objective and steps used. Evaluation runs on a fixed subset of
``--n-eval`` test images (half normal, half anomalous, chosen with seed 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchguard.adversarial.attacks import ATTACKS
from patchguard.config import build_config
from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import load_records
from patchguard.evaluation.evaluator import evaluate, predict_dataset
from patchguard.evaluation.metrics import compute_all
from patchguard.evaluation.sanity import sanity_check
from patchguard.models.factory import load_model
from patchguard.training import run_state, trainer

ROBUSTIFY_4 = {"robustify_epsilon": 4.0, "robustify_steps": 3, "robustify_epochs": 8,
               "robustify_images": ["skimage"]}
# name -> (preset, overrides); image size 112 for all (the demo data's size here).
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    # docs/method.md at 112 px (PGD-10 mask objective, lr 8e-4 everywhere, feature layer 12)
    "paper": ("paper", {"image_size": 112}),
    "paper-random": ("paper", {"image_size": 112, "pretrained": False}),
    "fast": ("fast", {"image_size": 112}),
    "fast-noadv": ("fast", {"image_size": 112, "adv_train": False}),
    # new options (issue 12), on top of fast
    "score-fz2-ramp": ("fast", {"image_size": 112, "train_objective": "score",
                                "backbone_lr": 1e-4, "frozen_blocks": 2, "eps_ramp": 0.3}),
    "nfgsm-score": ("fast", {"image_size": 112, "train_attack": "n-fgsm",
                             "train_objective": "score", "backbone_lr": 1e-4,
                             "frozen_blocks": 2, "eps_ramp": 0.3}),
    "free4": ("fast", {"image_size": 112, "train_attack": "free", "free_replays": 4,
                       "backbone_lr": 1e-4, "frozen_blocks": 2, "eps_ramp": 0.3,
                       "carry_perturbations": True}),
    # the robust-advtrain preset (= score-fz2-ramp, 16 epochs unless --epochs; the "robust"
    # preset until issue 21, whence the rows' names) and its twin without adversarial training,
    # for the "the attack is real" check
    "robust": ("robust-advtrain", {}),
    "robust-noadv": ("robust-advtrain", {"adv_train": False}),
    "score-trades": ("fast", {"image_size": 112, "train_objective": "score",
                              "backbone_lr": 1e-4, "frozen_blocks": 2, "eps_ramp": 0.3,
                              "trades_weight": 1.0}),
    # the pairwise ranking loss on the views' image scores (the decision, trained directly)
    "score-rank": ("fast", {"image_size": 112, "train_objective": "score",
                            "backbone_lr": 1e-4, "frozen_blocks": 2, "eps_ramp": 0.3,
                            "rank_weight": 10.0}),
    # issue 21: what the scores are computed from. "knn" is a patch memory bank (head knn, no
    # training) on the pretrained backbone; "-rb4" / "-rb8" first fine-tune the backbone's
    # layer-6 features without labels (robustify, FARE-style, PGD-3 at 4 or 8/255, 8 epochs over
    # the class's training images and scikit-image's photographs); "dsc-rb4" is PatchGuard's
    # discriminator on that backbone, frozen, with the robust-advtrain preset's score-objective
    # training attack (the --epochs of the run); --no-adv-train twins drop both robust parts.
    "knn": ("robust-advtrain", {"head": "knn", "adv_train": False}),
    "knn-rb4": ("robust-advtrain", {"head": "knn", **ROBUSTIFY_4}),
    "knn-rb8": ("robust-advtrain", {"head": "knn", **ROBUSTIFY_4, "robustify_epsilon": 8.0}),
    "dsc-rb4": ("robust-advtrain", {**ROBUSTIFY_4, "backbone_lr": 0.0}),
    # the preset that packages knn-rb4 ("robust" since issue 21, first "robust-features"), and
    # its twin (= knn: the bank on the original backbone)
    "robust-features": ("robust", {}),
    "robust-features-noadv": ("robust", {"adv_train": False}),
}
STRONG_STEPS = 50


def strong_attack(requested: str) -> tuple[str, str, int]:
    """(attack, objective, steps) of the strongest evaluation attack present."""
    if requested == "auto":
        requested = "standard" if "standard" in ATTACKS else "apgd"
    if requested not in ATTACKS:
        raise SystemExit(f"--attack {requested}: not in this tree's attacks {sorted(ATTACKS)}")
    if requested == "standard":  # fixed members and budgets; per image and metric the worst
        from patchguard.adversarial.standard import STANDARD_APGD_STEPS

        return requested, "per-metric worst of its members", STANDARD_APGD_STEPS
    return requested, "score", STRONG_STEPS


def eval_subset(root: str, class_name: str, image_size: int, n: int) -> TestDataset:
    """A fixed subset of the test split: n // 2 normal and n - n // 2 anomalous images."""
    records = load_records("mvtec", root, class_name, "test")
    rng = np.random.default_rng(0)
    normal = [r for r in records if r.label == 0]
    anomalous = [r for r in records if r.label == 1]
    chosen = ([normal[i] for i in sorted(rng.permutation(len(normal))[: n // 2])]
              + [anomalous[i] for i in sorted(rng.permutation(len(anomalous))[: n - n // 2])])
    return TestDataset(chosen, image_size)


def evaluate_checkpoint(path: Path, data: TestDataset, attack: tuple[str, str, int],
                        epsilons: list[float]) -> dict[str, Any]:
    """Image and pixel AUROC clean, under PGD-10 (mask) and the strong attack at each eps."""
    model, _ = load_model(path, torch.device("cpu"))
    settings = [("clean", 0.0, "pgd", "mask", 0)]
    for eps in epsilons:
        settings.append((f"pgd10_mask_{eps:g}", eps, "pgd", "mask", 10))
        settings.append((f"strong_{eps:g}", eps, *attack))
    row: dict[str, Any] = {"strong_attack": attack[0], "strong_objective": attack[1],
                           "strong_steps": attack[2], "eval_seconds": {}}
    for key, eps, name, objective, steps in settings:
        started = time.perf_counter()
        # steps None for the clean pass: the attack settings refuse 0 steps.
        preds = predict_dataset(model, data, eps, steps or None, batch_size=len(data),
                                progress=False,
                                attack=name, objective=objective, seed=0)
        metrics = compute_all(preds.labels, preds.scores, preds.masks, preds.maps)
        row[f"{key}_img"] = round(float(metrics["image_auroc"]), 4)
        row[f"{key}_pix"] = round(float(metrics["pixel_auroc"]), 4)
        row["eval_seconds"][key] = round(time.perf_counter() - started, 1)
    row["n_eval"] = len(data)
    row["n_eval_anomalous"] = int(preds.labels.sum())
    return row


def final_check(model: Any, path: Path, data: TestDataset, epsilons: list[float]
                ) -> dict[str, Any]:
    """The issue's checks of a finished model: the full ``standard`` and Square-1000 (image
    score) at each epsilon, and the gradient-masking sanity checks on APGD-50 (score)."""
    row: dict[str, Any] = {"checkpoint": str(path), "n_eval": len(data), "seconds": {}}
    for name, kwargs in (("standard", {}), ("square", {"objective": "score", "queries": 1000})):
        started = time.perf_counter()
        for r in evaluate(model, data, epsilons=epsilons, steps=10, batch_size=len(data),
                          progress=False,
                          attacks=(name,), **kwargs):
            row[f"{name}_{r['epsilon']:g}_img"] = round(float(r["image_auroc"]), 4)
            row[f"{name}_{r['epsilon']:g}_pix"] = round(float(r["pixel_auroc"]), 4)
        row["seconds"][name] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    report = sanity_check(model, data, attack="apgd", objective="score", steps=STRONG_STEPS,
                          epsilons=epsilons, more_steps_factor=2, batch_size=len(data),
                          progress=False, square_queries=1000)
    row["seconds"]["sanity"] = round(time.perf_counter() - started, 1)
    row["sanity_passed"] = report.passed
    row["sanity_warnings"] = report.warnings
    row["sanity_rows"] = [{k: r.get(k) for k in ("attack", "epsilon", "steps", "queries",
                                                 "image_auroc", "pixel_auroc")}
                          for r in report.rows]
    return row


def train_recipe(name: str, args: argparse.Namespace, run_dir: Path) -> tuple[list[int], int]:
    """Train ``name`` for ``args.epochs``, keeping checkpoints at the --eval-at epochs."""
    preset, overrides = RECIPES[name]
    values = {**overrides, "dataset": "mvtec", "dataset_dir": args.dataset_dir,
              "class_name": args.class_name, "output_dir": str(run_dir), "epochs": args.epochs,
              "workers": 0, "device": "cpu", "seed": args.seed, "save_every": 0,
              "checkpoint_every_min": 0}
    values.update(json.loads(args.set))
    config = build_config(preset, None, values)
    wanted = sorted({max(1, round(f * args.epochs)) for f in args.eval_at})

    class KeepEpochs(run_state.CheckpointPolicy):
        """The trainer's policy, plus an epoch file at each wanted epoch (also in the first
        half, where the trainer's own --save-every files start later)."""

        def epoch_done(self, payload, final=False, periodic=None):
            if periodic is None and payload["epoch"] in wanted:
                periodic = run_dir / f"epoch_{payload['epoch']:04d}.pt"
            return super().epoch_done(payload, final=final, periodic=periodic)

    original = trainer.CheckpointPolicy
    trainer.CheckpointPolicy = KeepEpochs
    try:
        trainer.train(config, progress=False, overwrite=True)
    finally:
        trainer.CheckpointPolicy = original
    if config.head == "knn":  # one pass, no epochs: the bank is the model
        (run_dir / "last.pt").replace(run_dir / "epoch_0001.pt")
        (run_dir / "last.pt").symlink_to("epoch_0001.pt")
        return [1], config.image_size
    return wanted, config.image_size


def budget_rows(name: str, label: str, args: argparse.Namespace, run_dir: Path,
                wanted: list[int], wall_min: float | None, attack: tuple[str, str, int]
                ) -> list[dict[str, Any]]:
    """One row per kept epoch of a trained run: its training cost and its evaluation."""
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()]
    rows = []
    for epoch in wanted:
        checkpoint = run_dir / f"epoch_{epoch:04d}.pt"
        model, _ = load_model(checkpoint, torch.device("cpu"))
        data = eval_subset(args.dataset_dir, args.class_name, model.image_size, args.n_eval)
        cpu = sum(r["cpu_seconds"] for r in log if r["epoch"] <= epoch)
        secs = sum(r["seconds"] for r in log if r["epoch"] <= epoch)
        probes = {k: v for r in log if r["epoch"] <= epoch
                  for k, v in r.items() if k.startswith("probe") or k.startswith("cata")}
        robust_min = robustify_minutes(checkpoint)
        rows.append({"recipe": label, "class": args.class_name, "epoch": epoch,
                     "epochs": args.epochs, "train_cpu_min": round(cpu / 60 + robust_min, 2),
                     "robustify_cpu_min": robust_min, "train_wall_min": round(secs / 60, 2),
                     "run_wall_min": wall_min, "threads": args.threads,
                     "set": {**RECIPES[name][1], **json.loads(args.set)},
                     "loss": (round(log[epoch - 1]["loss"], 4) if "loss" in log[epoch - 1]
                              else None), **probes,
                     **evaluate_checkpoint(checkpoint, data, attack, args.epsilons)})
    return rows


def robustify_minutes(checkpoint: Path) -> float:
    """CPU minutes of the robust backbone fine-tuning a run started from (its card), or 0."""
    from patchguard.training.robustify import card_path_for
    from patchguard.utils.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    weights = state["config"].get("backbone_weights")
    card = card_path_for(weights) if weights else None
    if card is None or not card.is_file():
        return 0.0
    return round(json.loads(card.read_text())["cpu_seconds"] / 60, 2)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """AUROC against training CPU minutes: clean, and under attack at 2/255 and 8/255; one row
    of panels per class when the rows hold several, each recipe one colour throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("clean_img", "clean image AUROC"), ("2", "image AUROC at 2/255"),
              ("8", "image AUROC at 8/255")]
    classes = list(dict.fromkeys(r.get("class", "?") for r in rows))
    fig, grid = plt.subplots(len(classes), 3, figsize=(14, 3.8 * len(classes)), sharey=True,
                             squeeze=False)
    recipes = sorted(dict.fromkeys(r["recipe"] for r in rows))
    # tab20: one distinct colour per recipe; past 20 recipes the colours repeat with another
    # marker, so every recipe stays distinct
    colors = [plt.get_cmap("tab20")(i % 20) for i in range(len(recipes))]
    markers = ["os^D"[(i // 20) % 4] for i in range(len(recipes))]
    for axes, name in zip(grid, classes):
        for ax, (key, title) in zip(axes, panels):
            for i, recipe in enumerate(recipes):
                points = sorted((r for r in rows if r["recipe"] == recipe
                                 and r.get("class", "?") == name),
                                key=lambda r: r["train_cpu_min"])
                if not points:
                    continue
                x = [r["train_cpu_min"] for r in points]
                label = recipe
                if points[0]["strong_attack"] != rows[0]["strong_attack"]:
                    label = f"{recipe} [{points[0]['strong_attack']}]"
                if key == "clean_img":
                    ax.plot(x, [r[key] for r in points], f"{markers[i]}-", color=colors[i],
                            label=label)
                else:
                    ax.plot(x, [r[f"strong_{key}_img"] for r in points], f"{markers[i]}-",
                            color=colors[i], label=label)
                    ax.plot(x, [r[f"pgd10_mask_{key}_img"] for r in points], "x:",
                            color=colors[i])
            ax.set_title(f"{name}: {title}" if len(classes) > 1 else title, fontsize=10)
            ax.set_xlabel("training CPU minutes (1 thread)")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("image AUROC")
    strong = rows[0]["strong_attack"] if rows else "?"
    grid[0][1].text(0.02, 0.98, f"solid: {strong} score-{rows[0]['strong_steps'] if rows else ''}"
                    "\ndotted: faithful PGD-10 mask", transform=grid[0][1].transAxes, va="top",
                    fontsize=8)
    handles: dict[str, Any] = {}
    for ax in grid[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles)
    fig.legend([handles[k] for k in labels], labels, fontsize=7, loc="center left",
               bbox_to_anchor=(0.995, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (image AUROC; pixel AUROC under the strong attack at 8)."""
    lines = ["| class | recipe | epoch | train CPU min | clean img / pix | PGD-10 mask 2 / 8 | "
             "strong 2 / 8 img | strong 8 pix | strong attack | n eval |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r.get("class", "?"), r["recipe"], r["train_cpu_min"])):
        lines.append(
            f"| {r.get('class', '?')} | {r['recipe']} | {r['epoch']}/{r['epochs']} | "
            f"{r['train_cpu_min']:.1f} | "
            f"{r['clean_img']:.3f} / {r['clean_pix']:.3f} | {r['pgd10_mask_2_img']:.3f} / "
            f"{r['pgd10_mask_8_img']:.3f} | {r['strong_2_img']:.3f} / {r['strong_8_img']:.3f} | "
            f"{r['strong_8_pix']:.3f} | {r['strong_attack']}-{r['strong_steps']} "
            f"{r['strong_objective']} | {r['n_eval']} |")
    return "\n".join(lines)


def main() -> None:
    """Train and evaluate the recipes named by --recipe; append rows; redraw the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=None)
    parser.add_argument("--class-name", default="gravel")
    parser.add_argument("--recipe", nargs="+", default=[], choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-at", type=float, nargs="+", default=[0.5, 1.0],
                        help="fractions of --epochs whose checkpoints are evaluated")
    parser.add_argument("--set", default="{}", help="JSON object of further config overrides")
    parser.add_argument("--n-eval", type=int, default=12, help="test images evaluated")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0])
    parser.add_argument("--attack", default="auto",
                        help="strong attack: auto (standard if present, else apgd), or a name")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/robust_budget")
    parser.add_argument("--tag", default="", help="suffix of the run folder and row name")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="JSON-lines files the plot and table read (default OUT/rows.jsonl)")
    parser.add_argument("--plot", default=None, help="the plot's file (default "
                        "OUT/robust_budget.png)")
    parser.add_argument("--final", action="store_true",
                        help="also run the full standard, Square-1000 and --sanity's checks on "
                        "each recipe's last checkpoint (final.jsonl; tens of minutes per model)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the runs already trained under --out (their --eval-at "
                        "checkpoints) and append their rows, without training")
    parser.add_argument("--final-only", action="store_true",
                        help="only those checks, on the runs already trained under --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    if args.final_only:
        for name in args.recipe:
            label = name + (f"@{args.tag}" if args.tag else "")
            run_final(args, out, label, out / "runs" / args.class_name / label / "last.pt")
        return
    if not args.plot_only:
        if args.dataset_dir is None:
            from patchguard.demo.dataset import build_demo_dataset

            args.dataset_dir = str(out / "data")
            build_demo_dataset(args.dataset_dir, classes=[args.class_name], image_size=112)
        attack = strong_attack(args.attack)
        for name in args.recipe:
            label = name + (f"@{args.tag}" if args.tag else "")
            run_dir = out / "runs" / args.class_name / label
            if args.eval_only:  # a run trained earlier (say, whose evaluation failed)
                wanted = sorted({max(1, round(f * args.epochs)) for f in args.eval_at})
                missing = [e for e in wanted if not (run_dir / f"epoch_{e:04d}.pt").exists()]
                if missing:
                    raise SystemExit(f"{run_dir}: no epoch_*.pt for epoch(s) {missing}; train "
                                     f"{label} first (without --eval-only)")
                wall = None
            else:
                started = time.perf_counter()
                wanted, _ = train_recipe(name, args, run_dir)
                wall = round((time.perf_counter() - started) / 60, 2)
            for row in budget_rows(name, label, args, run_dir, wanted, wall, attack):
                print(json.dumps(row), flush=True)
                with rows_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if args.final:
                run_final(args, out, label, run_dir / "last.pt")
    sources = [Path(p) for p in args.rows] if args.rows else [rows_path]
    rows = [json.loads(line) for source in sources if source.exists()
            for line in source.open() if line.strip()]
    if args.plot_only and args.recipe:  # the named recipes of those files only
        rows = [r for r in rows if r["recipe"] in args.recipe]
    if rows:
        plot(rows, Path(args.plot) if args.plot else out / "robust_budget.png")
        if args.plot_only:
            print(table(rows))


def run_final(args: argparse.Namespace, out: Path, label: str, checkpoint: Path) -> None:
    """:func:`final_check` of one recipe's checkpoint, appended to final.jsonl."""
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint}: no such checkpoint; train {label} first (without "
                         "--final-only)")
    model, _ = load_model(checkpoint, torch.device("cpu"))
    data = eval_subset(args.dataset_dir or str(out / "data"), args.class_name, model.image_size,
                       args.n_eval)
    row = {"recipe": label, "class": args.class_name,
           **final_check(model, checkpoint, data, args.epsilons)}
    print(json.dumps(row), flush=True)
    with (out / "final.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
