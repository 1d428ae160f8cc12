"""The ``report`` verb, and the HTML pages that ``test`` and ``benchmark`` write: one
self-contained page per run (:mod:`patchguard.evaluation.report.html`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .args import flag


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``patchguard`` parser."""
    report = verbs.add_parser("report", help="rebuild the HTML page of a test or benchmark run")
    report.add_argument("run_dir", metavar="RUN_DIR",
                        help="a folder holding results.json (test) and/or benchmark.json "
                             "(benchmark), or one such JSON file")
    flag(report, "--output", default=None,
         help="HTML file to write (default: beside the JSON, same name with .html)")
    flag(report, "--overwrite", action="store_true", default=False,
         help="replace an existing --output that patchguard did not write")


def gallery_dir(json_path: Path) -> Path:
    """Where ``test`` keeps the gallery tiles of a results file: ``results_gallery/``."""
    return json_path.with_name(json_path.stem + "_gallery")


def _card(checkpoint: Path, state: dict | None = None) -> str | None:
    from ..inference.card import model_card

    if state is None:
        from ..utils.checkpoint import load_checkpoint

        try:
            state = load_checkpoint(checkpoint)
        except (OSError, ValueError):
            return None
    return model_card(state)


def _notes_from_markdown(path: Path) -> str:
    """The notes ``test`` wrote under the table of results.md (sanity warnings)."""
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").splitlines()
    last_table = max((i for i, line in enumerate(lines) if line.startswith("|")), default=-1)
    return "\n".join(lines[last_table + 1:]).strip()


def write_test_report(json_path: Path, rows: list[dict[str, Any]], checkpoint: Path,
                      state: dict | None = None, gallery=None, notes: str = "",
                      output: Path | None = None) -> Path:
    """The page of one ``test`` run, beside its results file (``results.html``)."""
    from ..evaluation.report.html import (
        ClassSection,
        load_gallery,
        training_curves_png,
        write_html_report,
    )

    first = rows[0] if rows else {}
    name = str(first.get("class_name") or checkpoint.stem)
    if gallery is None:
        gallery = load_gallery(gallery_dir(json_path))
    section = ClassSection(name, rows, training_curves_png(checkpoint.parent), gallery,
                           _card(checkpoint, state))
    meta = {"data set": first.get("dataset"), "class": first.get("class_name"),
            "checkpoint": str(checkpoint), "images": first.get("n_images"),
            "anomalous": first.get("n_anomalous")}
    return write_html_report(output or json_path.with_suffix(".html"),
                             f"patchguard test: {name}", [section], notes=notes, meta=meta)


def test_gallery(args: argparse.Namespace, target, json_path: Path):
    """``test --gallery N``: clean and attacked heatmaps of N test images, saved for reports."""
    from ..evaluation.report.html import make_gallery, save_gallery
    from .attack_settings import attack_settings

    if not args.gallery:
        return None
    epsilon = max(args.epsilon_test)
    gallery = make_gallery(target.model, target.test_set, args.gallery, epsilon,
                           attack_settings(args), device=target.device,
                           class_name=target.class_name)
    save_gallery(gallery, gallery_dir(json_path))
    return gallery


def benchmark_gallery(args: argparse.Namespace, target, folder: Path,
                      epsilons: list[float]) -> None:
    """``benchmark --gallery N``: one class's gallery, kept for benchmark.html."""
    from ..evaluation.report.html import make_gallery, save_gallery
    from .attack_settings import attack_settings

    save_gallery(make_gallery(target.model, target.test_set, args.gallery, max(epsilons),
                              attack_settings(args), device=target.device,
                              class_name=target.class_name), folder)


def write_benchmark_report(out: Path, rows: list[dict[str, Any]], summary: str,
                           output: Path | None = None) -> Path:
    """The page of a ``benchmark`` run (``benchmark.html``): every class in one page."""
    from ..evaluation.report.html import (
        ClassSection,
        load_gallery,
        training_curves_png,
        write_html_report,
    )

    sections = []
    for name in dict.fromkeys(str(row.get("class_name")) for row in rows):
        class_rows = [row for row in rows if str(row.get("class_name")) == name]
        checkpoint = Path(class_rows[0].get("checkpoint") or "")
        gallery = load_gallery(out / "benchmark_gallery" / name)
        sections.append(ClassSection(name, class_rows, training_curves_png(
            checkpoint.parent if checkpoint.name else None), gallery))
    datasets = sorted({str(row.get("dataset")) for row in rows})
    return write_html_report(output or out / "benchmark.html", "patchguard benchmark", sections,
                             summary=summary, meta={"data set": ", ".join(datasets),
                                                    "classes": len(sections)})


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a results file of patchguard ({error})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "attack" in r
                                             for r in rows):
        raise ValueError(f"{path} is not a list of result rows (written by patchguard test "
                         "or benchmark)")
    return rows


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the HTML page(s) of a run folder from its files."""
    from ..evaluation.report.tables import class_table
    from ..utils.files import check_output_file

    target = Path(args.run_dir)
    if not target.exists():
        raise FileNotFoundError(f"RUN_DIR {target} does not exist")
    if target.is_file():
        found = [target]
    else:
        found = [p for p in (target / "results.json", target / "benchmark.json") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no results.json or benchmark.json in {target}: run "
                                "'patchguard test' or 'patchguard benchmark' first")
    if args.output and len(found) > 1:
        raise ValueError(f"{target} holds both results.json and benchmark.json; --output "
                         "needs one of them: give the JSON file instead of the folder")
    for json_path in found:
        rows = _read_rows(json_path)
        output = Path(args.output) if args.output else json_path.with_suffix(".html")
        # Without --output the page beside the results is the run's own; a named --output is
        # replaced only when patchguard wrote it (or with --overwrite).
        check_output_file(output, "--output", [("results file", json_path)],
                          overwrite=args.overwrite,
                          replaceable=(lambda p: True) if not args.output else None,
                          fix="choose another --output file, or add --overwrite")
        if json_path.name == "benchmark.json" or len({r.get("class_name") for r in rows}) > 1:
            results: dict[str, list] = {}
            for row in rows:
                results.setdefault(str(row.get("class_name")), []).append(row)
            page = write_benchmark_report(json_path.parent, rows, class_table(results),
                                          output=output)
        else:
            checkpoint = Path(rows[0].get("checkpoint") or json_path) if rows else json_path
            page = write_test_report(json_path, rows, checkpoint, output=output,
                                     notes=_notes_from_markdown(json_path.with_suffix(".md")))
        print(f"report: {page}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"report": cmd_report}
