"""Result reports: one table renderer for the terminal and Markdown, JSON, CSV, and the
paper-style per-class table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...utils.files import atomic_write_text

COLUMNS = (
    "class_name", "method", "attack", "objective", "epsilon", "steps", "restarts", "queries",
    "members", "image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max",
    "pixel_f1_max", "n_images", "images_per_s", "targets",
)
NO_PIXEL_MASKS_NOTE = "pixel AUROC n/a: the test set has no pixel masks (image-level labels only)"


def cell(value: Any, digits: int = 4) -> str:
    """One table cell: n/a for None, metrics with ``digits`` decimals, other numbers as %g."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) <= 1.0 else f"{value:g}"
    return str(value)


def render_table(header: Sequence[str], body: Sequence[Sequence[Any]], markdown: bool = False,
                 digits: int = 4) -> str:
    """The one table renderer: aligned text columns for the terminal, or a Markdown table.

    Text columns are left-aligned when they hold text and right-aligned when they hold numbers.
    """
    cells = [[cell(value, digits) for value in row] for row in body]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(header)]
    numeric = [all(not isinstance(row[i], str) for row in body) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header), *(line(row) for row in cells)])


def budget(row: dict[str, Any]) -> str:
    """An attack row's budget in words: steps, queries, or ``standard``'s members."""
    if row.get("attack") == "standard":
        return "members below"
    if row.get("queries") and not row.get("steps"):
        return f"{row['queries']} queries"
    return f"{row.get('steps', 0)} steps" if row.get("attack") != "clean" else "-"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Terminal table of evaluation rows: attack, epsilon, budget, image/pixel AUROC, AUPRO,
    images and images/s; then the members of any ``standard`` row."""
    header = ["attack", "eps/255", "budget", "image AUROC", "pixel AUROC", "AUPRO", "images",
              "img/s"]
    body = [[r["attack"], r["epsilon"], budget(r), r["image_auroc"], r["pixel_auroc"],
             r.get("aupro"), r["n_images"], _rate(r.get("images_per_s"))] for r in rows]
    text = render_table(header, body)
    for members in dict.fromkeys(r["members"] for r in rows
                                 if r["attack"] == "standard" and r.get("members")):
        text += f"\nstandard: {members}"
        if any(r.get("standard_budget", "fixed") != "fixed" for r in rows
               if r.get("members") == members):
            text += " (custom budgets, not the citable standard)"
    if any(row["pixel_auroc"] is None for row in rows):
        text += "\n" + NO_PIXEL_MASKS_NOTE
    return text


def _rate(value: float | None) -> str:
    """Images/s with three significant digits (n/a when unknown)."""
    return "n/a" if value is None else f"{value:.3g}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the main columns (one line per attack setting)."""
    fields = [c for c in COLUMNS if c != "targets" and any(c in row for row in rows)]
    body = [[row.get(f) for f in fields] for row in rows]
    return render_table(fields, body, markdown=True) + "\n"


def write_results(
    path: str | Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None
) -> Path:
    """Write the rows as a JSON list (each row carrying ``meta``, e.g. the class), atomically."""
    payload = [{**row, **(meta or {})} for row in rows]
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


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


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path, notes: str = "") -> Path:
    """Rows as a Markdown table (plus optional notes, e.g. sanity warnings), atomically."""
    text = markdown_table(rows) + (f"\n{notes}\n" if notes else "")
    return atomic_write_text(path, text)


def write_reports(json_path: str | Path, rows: Sequence[dict[str, Any]], notes: str = ""
                  ) -> list[Path]:
    """The JSON rows plus CSV, Markdown and (with attacked rows) the AUROC-vs-epsilon plot."""
    from .plots import plot_auroc_vs_epsilon

    json_path = Path(json_path)
    written = [write_results(json_path, rows), write_csv(rows, json_path.with_suffix(".csv")),
               write_markdown(rows, json_path.with_suffix(".md"), notes)]
    if any(r["attack"] != "clean" for r in rows):
        written.append(plot_auroc_vs_epsilon(
            rows, json_path.with_name(json_path.stem + "_vs_epsilon.png")))
    return written


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


PATCHGUARD = "PatchGuard"  # the method label of PatchGuard's own rows


def method_of(row: dict[str, Any]) -> str:
    """The method a row belongs to (rows written before baselines existed are PatchGuard's)."""
    return str(row.get("method") or PATCHGUARD)


def class_table(results: dict[str, list[dict[str, Any]]], epsilon: float | None = None) -> str:
    """Paper-style Markdown table: per class clean / attacked image and pixel AUROC, then mean.

    ``results`` maps a class name to its evaluation rows; the attacked columns are one pair per
    attack and epsilon (default: every epsilon evaluated; ``epsilon`` keeps one), so
    ``standard`` stands beside the paper's PGD and 2/255 beside 8/255. The column of the
    headline epsilon for the rows' image size (``test_image_size``; :mod:`.headline`: 2/255
    from 224 px up, 8/255 below) says "(headline)", and a note under the table says why.
    With one attack the columns say "attacked"; with one epsilon and no known image size they
    carry no epsilon. When the rows hold several methods (``benchmark --baselines``:
    PatchGuard and anomalib's detectors), a method column follows the class, every method has
    its own mean row, and the notes under the table say where the methods were attacked
    differently (objective, members).
    """
    from .headline import headline_note, headline_of

    attacked_rows = [r for rows in results.values() for r in rows if r["attack"] != "clean"]
    attacks = list(dict.fromkeys(r["attack"] for r in attacked_rows))
    epsilons = ([float(epsilon)] if epsilon is not None
                else sorted({float(r["epsilon"]) for r in attacked_rows}))
    present = {(r["attack"], float(r["epsilon"])) for r in attacked_rows}
    columns = [(a, e) for e in epsilons for a in attacks if (a, e) in present]
    sizes = [r.get("test_image_size") for rows in results.values() for r in rows]
    headline = headline_of(sizes)
    with_eps = len(epsilons) > 1 or headline is not None

    def name(attack: str, eps: float, metric: str) -> str:
        text = f"{'attacked' if len(attacks) == 1 else attack} {metric}"
        if with_eps:
            text += f" {eps:g}/255" + (" (headline)" if eps == headline else "")
        return text

    methods = list(dict.fromkeys(method_of(r) for rows in results.values() for r in rows))
    several = len(methods) > 1
    header = ["class", *(["method"] if several else []), "clean image",
              *(name(a, e, "image") for a, e in columns), "clean pixel",
              *(name(a, e, "pixel") for a, e in columns)]
    body: dict[str, list[list[Any]]] = {method: [] for method in methods}
    labels: dict[str, str] = {}
    for class_name, class_rows in results.items():
        for method in methods:
            rows = [r for r in class_rows if method_of(r) == method]
            clean = next((r for r in rows if r["attack"] == "clean"), None)
            if clean is None:
                continue
            attacked = {(a, e): next((r for r in rows if r["attack"] == a
                                      and float(r["epsilon"]) == e), {}) for a, e in columns}
            for (attack, _), row in attacked.items():
                if row:
                    labels.setdefault(attack, f"{attack} ({row.get('members') or budget(row)})")
            body[method].append([class_name, clean["image_auroc"],
                                 *(attacked[c].get("image_auroc") for c in columns),
                                 clean["pixel_auroc"],
                                 *(attacked[c].get("pixel_auroc") for c in columns)])
    lines: list[list[Any]] = []
    for method, method_body in body.items():
        means = ([_mean(column) for column in zip(*[row[1:] for row in method_body])]
                 if method_body else [])
        method_body = [*method_body, ["**mean**", *means]]
        lines += [[row[0], method, *row[1:]] if several else row for row in method_body]
    label = ((" and ".join(f"{e:g}/255" for e in epsilons) + "; " + "; ".join(labels.values()))
             if labels else "none (clean rows only)")
    notes = list(dict.fromkeys(note for e in epsilons for note in _method_notes(results, e))
                 ) if several else []
    if columns:
        notes.append(headline_note(sizes, {float(r["epsilon"]) for r in attacked_rows}))
    text = f"Attack: {label}\n\n" + render_table(header, lines, markdown=True) + "\n"
    return text + "".join(f"\n{note}\n" for note in notes)


def _method_notes(results: dict[str, list[dict[str, Any]]], eps: float | None) -> list[str]:
    """Where methods were attacked differently: the objective per attack, skipped members."""
    rows = [r for class_rows in results.values() for r in class_rows
            if r["attack"] != "clean" and float(r["epsilon"]) == eps]
    notes = []
    for attack in dict.fromkeys(r["attack"] for r in rows if r["attack"] != "standard"):
        by_objective: dict[str, list[str]] = {}
        for row in rows:
            if row["attack"] == attack:
                methods = by_objective.setdefault(str(row.get("objective")), [])
                if method_of(row) not in methods:
                    methods.append(method_of(row))
        if len(by_objective) > 1:
            notes.append(f"{attack} objective: " + "; ".join(
                f"{', '.join(methods)}: {objective}" for objective, methods in
                by_objective.items()) + " (the baselines have no patch logits, so the paper's "
                "mask objective does not apply to them; they are attacked on their image score)")
    skipped: dict[str, list[str]] = {}
    for row in rows:
        if row["attack"] == "standard" and row.get("members_skipped"):
            methods = skipped.setdefault(str(row["members_skipped"]), [])
            if method_of(row) not in methods:
                methods.append(method_of(row))
    for members, methods in skipped.items():
        notes.append(f"standard for {', '.join(methods)}: without {members}; the map member "
                     "attacks the same normal-minus-anomalous difference on the anomaly map")
    return notes


def class_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Image and pixel AUROC per method, attack and epsilon, averaged over the classes."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((method_of(row), row["attack"], row["epsilon"]), []).append(row)
    return [{"method": method, "attack": attack, "epsilon": eps,
             "image_auroc": _mean([r.get("image_auroc") for r in group]),
             "pixel_auroc": _mean([r.get("pixel_auroc") for r in group]),
             "n_classes": len({r.get("class_name") for r in group})}
            for (method, attack, eps), group in groups.items()]
