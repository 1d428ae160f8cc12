"""Plots of results and training: AUROC against epsilon, robustness bars, training curves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...utils.plotting import pyplot, save_figure


def plot_auroc_vs_epsilon(rows: Sequence[dict[str, Any]], path: str | Path,
                          title: str | None = None) -> Path:
    """Image and pixel AUROC against epsilon, one line per attack (clean = epsilon 0).

    Rows of several methods (``benchmark --baselines``) give one line per method and attack,
    each starting from its own method's clean row.
    """
    plt = pyplot()
    methods = list(dict.fromkeys(str(r.get("method") or "PatchGuard") for r in rows))
    several = len(methods) > 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
        for method in methods:
            own = [r for r in rows if str(r.get("method") or "PatchGuard") == method]
            clean = [r for r in own if r["attack"] == "clean"]
            for attack in dict.fromkeys(r["attack"] for r in own if r["attack"] != "clean"):
                points = sorted((r["epsilon"], r[metric]) for r in [*clean, *[
                    r for r in own if r["attack"] == attack]] if r.get(metric) is not None)
                if points:
                    ax.plot(*zip(*points), marker="o",
                            label=f"{method} {attack}" if several else attack)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="epsilon (1/255)", title=metric.replace("_", " "), ylim=(0, 1))
    axes[0].set_ylabel("AUROC (0.5 = chance)")
    if axes[0].get_legend_handles_labels()[0]:  # no lines when every AUROC is undefined
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training_log(log_path: str | Path, output_path: str | Path) -> Path:
    """Plot the per-view losses and images/s of a ``train_log.jsonl`` to a PNG."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    plt = pyplot()
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in records]
    for key in ("loss", "clean", "adv_clean", "pseudo", "adv_pseudo"):
        if records and key in records[0]:
            ax_loss.plot(epochs, [r[key] for r in records], label=key, marker=".")
    ax_loss.set(xlabel="epoch", ylabel="loss (sum over patches, mean over images)",
                title="training loss per view")
    ax_loss.set_yscale("log")
    if ax_loss.get_legend_handles_labels()[0]:  # a kNN head's log has no losses to name
        ax_loss.legend(fontsize=8)
    ax_speed.plot(epochs, [r["images_per_s"] for r in records], marker=".")
    ax_speed.set(xlabel="epoch", ylabel="images/s", title="throughput")
    fig.tight_layout()
    return save_figure(fig, output_path)


def _recipe(row: dict) -> str:
    """A row's recipe label: its ``recipe`` field, else whether it was adversarially trained."""
    return str(row.get("recipe") or ("adv-trained" if row.get("adv_train", True) else "no adv"))


def plot_robustness(rows: Sequence[dict], output_path: str | Path) -> Path:
    """Bar chart per class: clean and attacked image/pixel AUROC, one colour per recipe/attack."""
    plt = pyplot()
    classes = list(dict.fromkeys(r["class_name"] for r in rows))
    settings = list(dict.fromkeys((_recipe(r), r["attack"], r["epsilon"]) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.8 / max(len(settings), 1)
    for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
        for j, (recipe, attack, eps) in enumerate(settings):
            values = []
            for name in classes:
                match = [r for r in rows if r["class_name"] == name and
                         _recipe(r) == recipe and r["attack"] == attack and
                         r["epsilon"] == eps]
                value = match[0][metric] if match else None
                values.append(float("nan") if value is None else value)
            label = f"{recipe}, " + (
                "clean" if attack == "clean" else f"{attack} {eps:g}/255")
            positions = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(classes))]
            ax.bar(positions, values, width, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(classes)), classes)
        ax.set(ylim=(0, 1), title=metric.replace("_", " "))
    axes[0].set_ylabel("AUROC (0.5 = chance)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, output_path)
