"""The ``audit`` verb: does a published robustness figure hold? The authors' checkpoint (or any
patchguard checkpoint) under the paper's own attack beside ``standard``, one class at a time,
resumable; Markdown, JSON and an HTML page whose first line says how far the figures move.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .args import POSITIVE, common_flags, flag

RESULT_NAME = "audit.json"  # per class, in OUTPUT_DIR/<class>/, and the summary in OUTPUT_DIR


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``patchguard`` parser."""
    from .weights import import_flags

    audit = verbs.add_parser(
        "audit", help="the paper's attack beside standard on published (or any) checkpoints")
    source = audit.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", default=None,
                        help="a patchguard checkpoint or an authors' .pth (one class), or a "
                             "folder holding <class>/last.pt or patchguard_<dataset>_<class>.pth")
    source.add_argument("--download", action="store_true", default=None,
                        help="download the authors' checkpoint of each class (and the data set "
                             "when --dataset-dir does not exist)")
    flag(audit, "--dataset", default=None,
         help="data set layout (default: the checkpoint's, or mvtec for the authors' files)")
    flag(audit, "--dataset-dir", default=None,
         help="root holding one folder per class (default: the checkpoint's; with --download "
              "datasets/DATASET)")
    classes = audit.add_mutually_exclusive_group()
    classes.add_argument("--class-name", "--class_name", default=None,
                         help="one class (default: a patchguard checkpoint's own)")
    classes.add_argument("--classes", nargs="+", default=None, help="several classes")
    flag(audit, "--output-dir", default=None, help="default: audit/DATASET")
    flag(audit, "--batch-size", type=POSITIVE, default=16)
    # The defaults are read when the audit runs: importing them here would import torch on
    # every `patchguard --help`.
    flag(audit, "--pgd-steps", type=POSITIVE, default=None,
         help="steps of the paper's PGD (default: the paper's 10, as standard's PGD member; "
              "fewer: not citable)")
    flag(audit, "--standard-apgd-steps", type=POSITIVE, default=None,
         help="steps of standard's APGD members (default: standard's fixed 100; fewer: not "
              "citable, for a quick look)")
    flag(audit, "--standard-square-queries", type=POSITIVE, default=None,
         help="queries of standard's Square member and of the sanity Square check (default: "
              "standard's fixed 1000)")
    flag(audit, "--no-sanity", action="store_true", default=None,
         help="skip the gradient-masking checks (the table then says they did not run)")
    flag(audit, "--overwrite", action="store_true", default=None,
         help="redo classes whose stored audit was made with other settings or another model")
    common_flags(audit)
    import_flags(audit)  # how an authors' .pth is imported (default: their ViT-S/14, 224 px)


def _budget(args: argparse.Namespace):
    from ..adversarial.standard import STANDARD_APGD_STEPS, STANDARD_SQUARE_QUERIES
    from ..evaluation.audit import PAPER_STEPS, AuditBudget

    return AuditBudget(pgd_steps=args.pgd_steps or PAPER_STEPS,
                       apgd_steps=args.standard_apgd_steps or STANDARD_APGD_STEPS,
                       square_queries=args.standard_square_queries or STANDARD_SQUARE_QUERIES,
                       sanity=not args.no_sanity)


def _classes(args: argparse.Namespace) -> list[str]:
    """The classes asked for (a patchguard checkpoint's own by default); sets the data set."""
    from ..utils.checks import InputError

    names = [args.class_name] if args.class_name else list(args.classes or [])
    if args.checkpoint and Path(args.checkpoint).is_file():
        from ..authors.checkpoints import checkpoint_kind

        if checkpoint_kind(args.checkpoint) == "patchguard":  # its data set and class
            from .weights import stored_config

            config = stored_config(Path(args.checkpoint))
            if not names and config.get("class_name"):
                names = [config["class_name"]]
            args.dataset = args.dataset or config.get("dataset")
    # The authors publish MVTec AD and VisA weights; their files record no data set.
    args.dataset = args.dataset or "mvtec"
    if not names:
        raise InputError("--class-name", None, "is required", "give --class-name NAME or "
                         "--classes NAME [NAME ...]")
    return list(dict.fromkeys(names))


def _check_classes(args: argparse.Namespace, names: list[str]) -> None:
    """Every class refused before anything is written: unknown or unpublished names, missing
    folders or checkpoints."""
    from ..utils.checks import InputError

    if args.download:
        from ..authors.index import resolve_weights

        for name in names:
            resolve_weights(args.dataset, name)  # unpublished or unknown: says so, no request
    if args.dataset_dir and Path(args.dataset_dir).is_dir():
        root = Path(args.dataset_dir)
        for name in names:
            if not (root / name).is_dir():
                from ..data.layouts import discover_classes

                found = discover_classes(root)
                raise InputError("--class-name", name, f"has no folder in {root}",
                                 f"classes there: {', '.join(found) or 'none'}")
    elif args.dataset_dir and not args.download:
        raise FileNotFoundError(f"--dataset-dir {args.dataset_dir} does not exist; give the "
                                "data set root, or add --download to fetch it")
    if args.checkpoint:
        for name in names:
            _local_checkpoint(args, name, len(names) > 1)  # each class has its file


def _local_checkpoint(args: argparse.Namespace, name: str, several: bool) -> Path:
    """The file given with --checkpoint for one class (a file, or found in a folder)."""
    from ..utils.checks import InputError

    path = Path(args.checkpoint).expanduser()
    if path.is_file():
        if several:
            raise InputError("--checkpoint", str(path), "is one file, but several classes "
                             "were given", "give a folder holding <class>/last.pt per class, "
                             "or one --class-name")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    candidates = [path / name / "last.pt", path / f"{name}.pt",
                  path / name / f"patchguard_{args.dataset}_{name}.pth",
                  path / f"patchguard_{args.dataset}_{name}.pth"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no checkpoint for class {name!r} in --checkpoint {path}: "
                                f"expected one of {', '.join(str(p) for p in candidates)}")
    return found


def _import_local(args: argparse.Namespace, original: Path, target: Path) -> Path:
    """An authors' .pth imported to ``target`` (reused when it holds this very file)."""
    from ..authors.checkpoints import ORIGINAL_SHA256, import_original_checkpoint, imported_source
    from ..data.download.transfer import file_digest
    from ..utils.checkpoint import load_checkpoint
    from ..utils.files import check_output_file
    from .weights import import_kwargs

    digest = file_digest(original)
    if target.is_file():
        try:
            state = load_checkpoint(target)
        except ValueError:
            state = {}
        if state.get("imported_from") == imported_source(original) and \
                (state.get("train_summary") or {}).get(ORIGINAL_SHA256) == digest:
            return target
        check_output_file(target, "--output-dir", [("checkpoint", original)],
                          overwrite=bool(args.overwrite),
                          fix="choose another --output-dir, or add --overwrite")
    return import_original_checkpoint(
        original, target, dataset=args.dataset, class_name=target.parent.name,
        provenance={"original_location": str(original), ORIGINAL_SHA256: digest},
        **import_kwargs(args))


def _checkpoint(args: argparse.Namespace, name: str, out: Path, several: bool) -> Path:
    """The patchguard checkpoint to audit for one class: downloaded, imported or given."""
    if args.download:
        from ..authors.checkpoints import download_original_checkpoint
        from .weights import import_kwargs

        return download_original_checkpoint(args.dataset, name, out / name / "last.pt",
                                            progress=not args.quiet, **import_kwargs(args))
    from ..authors.checkpoints import checkpoint_kind

    path = _local_checkpoint(args, name, several)
    if checkpoint_kind(path) == "original":
        return _import_local(args, path, out / name / "imported.pt")
    return path


def _stored(path: Path, settings: dict[str, Any], fingerprint: str,
            overwrite: bool) -> dict[str, Any] | None:
    """A class's stored audit when it is this one (same settings and model), else None.

    Another audit in its place is refused unless ``overwrite``: it is not redone silently.
    """
    from ..utils.checks import InputError

    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        same = stored["settings"] == settings and stored["model_fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        stored, same = None, False
    if same:
        return stored
    if overwrite:
        return None
    raise InputError("--output-dir", str(path.parent.parent), f"already holds an audit in {path}"
                     " made with other settings or another model",
                     "choose another --output-dir, or add --overwrite to redo it")


def _audit_one(args: argparse.Namespace, name: str, out: Path, several: bool,
               budget) -> dict[str, Any]:
    """One class: read back when done, else fetch what is missing, run both sides, store."""
    from ..evaluation.audit import audit_class, class_table
    from ..evaluation.evaluator import load_for_evaluation
    from ..inference.card import model_card
    from ..utils.checkpoint import model_fingerprint
    from ..utils.files import atomic_write_text

    checkpoint = _checkpoint(args, name, out, several)
    dataset_dir = args.dataset_dir
    if args.download:
        from .weights import ensure_data

        dataset_dir = ensure_data(args.dataset, dataset_dir, name, bool(args.quiet))
    target = load_for_evaluation(checkpoint, args.dataset, dataset_dir, name,
                                 args.device or "auto")
    settings = budget.to_dict()
    fingerprint = model_fingerprint(target.state["model"])
    path = out / name / RESULT_NAME
    stored = _stored(path, settings, fingerprint, bool(args.overwrite))
    if stored is not None:
        print(f"{name}: read back from {path}")
        return stored
    print(f"{name}: auditing {checkpoint}")
    result = audit_class(target.model, target.test_set, budget, batch_size=args.batch_size,
                         device=target.device, progress=not args.quiet)
    meta = {"dataset": target.dataset, "class_name": name, "checkpoint": str(checkpoint),
            "dataset_dir": target.dataset_dir}
    result = {**meta, "settings": settings, "model_fingerprint": fingerprint,
              "card": model_card(target.state), **result,
              "rows": [{**row, **meta} for row in result["rows"]]}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(class_table(name, result, markdown=False))
    return result


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit every class, then write audit.md, audit.json and audit.html in --output-dir."""
    from ..evaluation.audit import audit_markdown, summary_line
    from ..utils.files import atomic_write_text

    names = _classes(args)
    budget = _budget(args)
    out = Path(args.output_dir or Path("audit") / args.dataset)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output-dir {out} is a file; give a folder")
    _check_classes(args, names)
    results = {name: _audit_one(args, name, out, len(names) > 1, budget) for name in names}
    text = audit_markdown(results, args.dataset)
    atomic_write_text(out / "audit.md", text)
    summary = {"summary": summary_line(results, args.dataset), "dataset": args.dataset,
               "classes": results}
    atomic_write_text(out / RESULT_NAME, json.dumps(summary, indent=2) + "\n")
    html = _write_html(out / "audit.html", results, text, args.dataset)
    print(text)
    print(f"written: {out / 'audit.md'}, {out / RESULT_NAME}, {html}")
    return 0


def _write_html(path: Path, results: dict[str, dict[str, Any]], text: str,
                dataset: str) -> Path:
    from ..evaluation.audit import class_table, sanity_text
    from ..evaluation.report.html import ClassSection, write_html_report

    # No AUROC-vs-epsilon plot: the two sides attack differently, one line per attack would
    # mix them; the tables say it better.
    sections = [ClassSection(name, result["rows"], card=result.get("card"), plot=False)
                for name, result in results.items()]
    summary_part = text.split("\n## Classes", 1)[0].replace("## Summary\n", "")
    notes = "\n\n".join(class_table(name, r, markdown=False) for name, r in results.items())
    if not notes:
        notes = "\n".join(sanity_text(r.get("sanity")) for r in results.values())
    return write_html_report(path, f"patchguard audit: {dataset}", sections, notes=notes,
                             summary=summary_part.strip(), meta={"data set": dataset,
                                                                 "classes": len(results)})


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"audit": cmd_audit}
