"""Result reports: CSV, Markdown, AUROC-against-epsilon plots and the paper-style class table."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

COLUMNS = (
    "class_name", "attack", "objective", "epsilon", "steps", "restarts", "image_auroc",
    "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max", "n_images",
    "targets",
)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1.0 else f"{value:g}"
    return str(value)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """All rows as CSV (known columns first, then any others), atomically."""
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    fields = [c for c in COLUMNS if any(c in row for row in rows)] + extra
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
    return atomic_write_text(path, buffer.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the main columns (one line per attack setting)."""
    fields = [c for c in COLUMNS if c != "targets" and any(c in row for row in rows)]
    lines = ["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(f)) for f in fields) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path, notes: str = "") -> Path:
    """Rows as a Markdown table (plus optional notes, e.g. sanity warnings), atomically."""
    text = markdown_table(rows) + (f"\n{notes}\n" if notes else "")
    return atomic_write_text(path, text)


def plot_auroc_vs_epsilon(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Image and pixel AUROC against epsilon, one line per attack (clean = epsilon 0)."""
    from .visualization import _pyplot

    plt = _pyplot()
    clean = [r for r in rows if r["attack"] == "clean"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows if r["attack"] != "clean"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, metric in zip(axes, ("image_auroc", "pixel_auroc")):
        for attack in attacks:
            points = sorted((r["epsilon"], r[metric]) for r in [*clean, *[
                r for r in rows if r["attack"] == attack]] if r.get(metric) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=attack)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="epsilon (1/255)", title=metric.replace("_", " "), ylim=(0, 1))
    axes[0].set_ylabel("AUROC (0.5 = chance)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_table(results: dict[str, list[dict[str, Any]]], epsilon: float | None = None) -> str:
    """Paper-style Markdown table: per class clean / attacked image and pixel AUROC, then mean.

    ``results`` maps a class name to its evaluation rows; the attacked columns use the first
    attack at ``epsilon`` (default: the largest epsilon evaluated).
    """
    lines = ["| class | clean image | attacked image | clean pixel | attacked pixel |",
             "| --- | --- | --- | --- | --- |"]
    sums: list[list[float]] = [[], [], [], []]
    label = ""
    for name, rows in results.items():
        clean = next(r for r in rows if r["attack"] == "clean")
        attacked_rows = [r for r in rows if r["attack"] != "clean"]
        eps = epsilon if epsilon is not None else max(r["epsilon"] for r in attacked_rows)
        attacked = next(r for r in attacked_rows if r["epsilon"] == eps)
        label = f"{attacked['attack']} {eps:g}/255, {attacked['steps']} steps"
        values = [clean["image_auroc"], attacked["image_auroc"], clean["pixel_auroc"],
                  attacked["pixel_auroc"]]
        for bucket, value in zip(sums, values):
            if value is not None:
                bucket.append(value)
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in values) + " |")
    means = [sum(b) / len(b) if b else None for b in sums]
    lines.append("| **mean** | " + " | ".join(_cell(v) for v in means) + " |")
    return f"Attack: {label}\n\n" + "\n".join(lines) + "\n"
