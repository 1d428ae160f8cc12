"""The ``test`` and ``visualize`` verbs: evaluate a checkpoint clean and under attack, and draw
clean and attacked heatmaps.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from .args import (
    EPSILON_ARG,
    NON_NEGATIVE,
    POSITIVE,
    common_flags,
    data_flags,
    flag,
    logger_flags,
)
from .attack_settings import attack_flags, attack_settings


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``test`` and ``visualize`` to the ``patchguard`` parser."""
    test = verbs.add_parser("test", help="evaluate a checkpoint clean and under PGD")
    flag(test, "--checkpoint", required=True)
    data_flags(test, required=False)
    common_flags(test)
    attack_flags(test)  # --epsilon-test ... --workers, from AttackSettings
    flag(test, "--json", default=None,
         help="results file NAME.json (default: results.json beside the checkpoint); also "
              "writes NAME.csv, NAME.md, NAME.html, NAME_vs_epsilon.png and NAME_gallery/")
    flag(test, "--overwrite", action="store_true", default=False,
         help="replace those files even when patchguard did not write them")
    flag(test, "--no-record", action="store_true", default=None,
         help="do not record the results for the model card (CHECKPOINT_STEM.results.json)")
    flag(test, "--sanity", action="store_true", default=None,
         help="also check for gradient masking: epsilon sweep, more steps, Square Attack, "
         "eps 128/255")
    flag(test, "--gallery", type=NON_NEGATIVE, default=6,
         help="test images shown clean and attacked in results.html (default 6; 0: none)")
    logger_flags(test, "the --json folder/logs")
    flag(test, "--download", action="store_true", default=None,
         help="fetch what is missing first: the authors' weights for --dataset/--class-name "
              "when --checkpoint does not exist, the data set when --dataset-dir does not")

    vis = verbs.add_parser("visualize", help="clean and attacked heatmaps as PNGs")
    flag(vis, "--checkpoint", required=True)
    data_flags(vis, required=False)
    common_flags(vis)
    flag(vis, "--epsilon", type=EPSILON_ARG, default=8.0,
         help="in 1/255 units, 0..255; 0 for clean only")
    attack_flags(vis, skip=("epsilons", "early_stop", "workers"), flags={"steps": "--steps"},
                 one_attack=True)
    flag(vis, "--output-dir", default=None, help="default: <checkpoint dir>/visualization")
    flag(vis, "--overwrite", action="store_true", default=False,
         help="replace NNNN_*.png panels and contact_sheet.png in --output-dir that patchguard "
              "did not write")
    flag(vis, "--max-images", type=POSITIVE, default=None,
         help="limit the number of test images")


def sanity_notes(args: argparse.Namespace, settings, model, test_set, device) -> str:
    """Run the gradient-masking checks (on ``settings``' attack budgets), print them, return
    them as Markdown notes."""
    from ..adversarial.names import QUERY_ATTACKS
    from ..evaluation.sanity import sanity_check

    # The checks probe a gradient attack: the first one asked for, else APGD on the image score
    # (the standard evaluation's strongest gradient member).
    gradient = [a for a in settings.attacks if a not in (*QUERY_ATTACKS, "standard")]
    attack, objective = (gradient[0], settings.objective) if gradient else ("apgd", "score")
    report = sanity_check(model, test_set, attack=attack, objective=objective,
                          steps=settings.steps, batch_size=settings.batch_size, device=device,
                          progress=not args.quiet, square_queries=settings.query_budget)
    lines = ["Sanity checks against gradient masking:"]
    lines += [f"- checked: {check}" for check in report.checks]
    lines += [f"- WARNING: {warning}" for warning in report.warnings] or ["- all passed"]
    print("\n".join(lines))
    return "\n".join(lines)


def warn_epsilon_units(flag: str, epsilons: list[float]) -> None:
    """Warn about epsilons that look like [0, 1] units (they are in 1/255)."""
    from ..utils.checks import epsilon_units_note

    for value in epsilons:
        note = epsilon_units_note(flag, value)
        if note:
            logging.getLogger("patchguard").warning(note)


def _report_paths(json_path: Path) -> list[Path]:
    """Every file ``test`` writes for one --json path (see evaluation.reports.write_reports)."""
    return [json_path, json_path.with_suffix(".csv"), json_path.with_suffix(".md"),
            json_path.with_name(json_path.stem + "_vs_epsilon.png"),
            json_path.with_suffix(".html")]


def check_report_paths(json_path: Path, checkpoint: Path, overwrite: bool = False,
                       run_folder: bool = False) -> None:
    """Refuse a --json (or a report beside it) that would replace a checkpoint, a folder, or
    a file patchguard did not write (unless ``overwrite``). ``run_folder``: the default
    results.* beside the checkpoint, a training run's own report files (RUN_FILES)."""
    from ..inference.card import results_path
    from ..utils.files import check_output_file

    inputs = [("checkpoint", checkpoint), ("model card's results file", results_path(checkpoint))]
    for path in _report_paths(json_path):
        check_output_file(path, "--json", inputs, overwrite=overwrite,
                          replaceable=(lambda p: True) if run_folder else None,
                          fix="choose another --json file, or add --overwrite")
    from ..utils.checks import InputError
    from .report import gallery_dir

    gallery = gallery_dir(json_path)
    if gallery.exists() and not gallery.is_dir():
        raise InputError("--json", str(json_path), f"the gallery folder {gallery} is a file",
                         "choose another --json file, or move that file")


def cmd_test(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint; print the table and write the JSON rows and reports."""
    from ..evaluation.evaluator import evaluate, load_for_evaluation
    from ..evaluation.report.tables import format_table, write_reports
    from ..inference.card import write_results_sidecar
    from ..tracking import check_loggers
    from ..utils.device import resolve_device
    from ..utils.files import refuse_inside

    checkpoint = Path(args.checkpoint)
    json_path = Path(args.json or checkpoint.with_name("results.json"))
    # Before any work, as every other input.
    check_report_paths(json_path, checkpoint, args.overwrite, run_folder=args.json is None)
    warn_epsilon_units("--epsilon-test", args.epsilon_test)
    settings = attack_settings(args, sorted({0.0, *args.epsilon_test}))
    loggers = check_loggers(args.logger or ())
    device = resolve_device(args.device or "auto")
    if args.download:  # the original's --use_weight_prep / --use_data_prep
        from .weights import prepare_test_download

        prepare_test_download(args)
    target = load_for_evaluation(checkpoint, args.dataset, args.dataset_dir, args.class_name,
                                 device)
    # Reports written into the data set (a PNG in test/good) would be read back as test images.
    refuse_inside(json_path.parent, "--json", [("data set folder", target.dataset_dir)])
    if not any(record.label for record in target.test_set.records):
        logging.getLogger("patchguard").warning(
            "the test set of %s has no anomalous test images: AUROC, AP and F1 are undefined "
            "and reported as n/a", target.class_name)
    started = time.perf_counter()
    rows = evaluate(target.model, target.test_set, settings, device=target.device,
                    progress=not args.quiet)
    seconds = time.perf_counter() - started
    print(format_table(rows))
    meta = {"dataset": target.dataset, "class_name": target.class_name,
            "checkpoint": str(args.checkpoint)}
    notes = ""
    if args.sanity:
        notes = sanity_notes(args, settings, target.model, target.test_set, target.device)
    rows = [{**row, **meta} for row in rows]
    written = write_reports(json_path, rows, notes)
    from .report import test_gallery, write_test_report

    written.append(write_test_report(json_path, rows, checkpoint, target.state,
                                     test_gallery(args, target, json_path), notes))
    print(f"reports: {', '.join(str(p) for p in written[1:])}")
    if loggers:
        _log_test(args, loggers, json_path, target, rows, seconds)
    if not args.no_record:
        # The model card's results go into a small file beside the checkpoint: a test never
        # rewrites (and so never risks) the model itself.
        sidecar = write_results_sidecar(checkpoint, target.state, rows)
        print(f"model card results: {sidecar}")
    print(f"results: {json_path}")
    return 0


def _log_test(args: argparse.Namespace, loggers: list[str], json_path: Path, target,
              rows: list[dict], seconds: float) -> None:
    """``test --logger``: the rows and the evaluation's images/s, at the checkpoint's epoch."""
    from ..tracking import open_trackers

    log_dir = Path(args.log_dir) if args.log_dir else json_path.parent / "logs"
    step = int((target.state or {}).get("epoch") or 0)
    # images/s: one pass over the test set per row, over the wall time of all rows.
    evaluated = sum(int(row.get("n_images") or 0) for row in rows)
    with open_trackers(loggers, log_dir, "test") as trackers:
        trackers.params({"checkpoint": str(args.checkpoint), "dataset": target.dataset,
                         "class_name": target.class_name, "epsilons": args.epsilon_test,
                         "steps": args.steps_test, "attacks": args.attack,
                         "objective": args.objective, "restarts": args.restarts})
        trackers.scalars({"test/images_per_s": evaluated / max(seconds, 1e-9),
                          "test/seconds": seconds}, step)
        trackers.results(rows, step)
    print(f"logged: {', '.join(loggers)} in {log_dir}")


def cmd_visualize(args: argparse.Namespace) -> int:
    """Write heatmap panels and a contact sheet for the test images."""
    from ..evaluation.evaluator import load_for_evaluation, predict_dataset
    from ..evaluation.report.panels import save_panels
    from ..utils.device import resolve_device
    from ..utils.files import record_outputs, refuse_foreign, refuse_inside, remove_own_outputs

    warn_epsilon_units("--epsilon", [args.epsilon])
    out_dir = Path(args.output_dir or Path(args.checkpoint).parent / "visualization")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {out_dir} is a file; give a folder")
    panels = re.compile(r"\d{4}_.+\.png|contact_sheet\.png")
    device = resolve_device(args.device or "auto")
    target = load_for_evaluation(args.checkpoint, args.dataset, args.dataset_dir,
                                 args.class_name, device)
    refuse_inside(out_dir, "--output-dir", [("data set folder", target.dataset_dir)])
    model, device, test_set = target.model, target.device, target.test_set
    if args.max_images is not None and args.max_images < len(test_set):
        # An even spread keeps every defect type in view.
        step = len(test_set) / args.max_images
        indices = [int(i * step) for i in range(args.max_images)]
        test_set.records = [test_set.records[i] for i in indices]
    # The panels' names (save_panels), checked before any work: a user's photo named like one
    # is never replaced without --overwrite.
    names = [f"{i:04d}_{Path(r.path).parent.name}_{Path(r.path).stem}.png"
             for i, r in enumerate(test_set.records)] + ["contact_sheet.png"]
    refuse_foreign([out_dir / n for n in names], "--output-dir", args.overwrite)
    progress = not args.quiet
    clean = predict_dataset(model, test_set, 0.0, batch_size=args.batch_size, device=device,
                            keep_images=True, progress=progress, desc="clean")
    adv = None
    if args.epsilon > 0:
        adv = predict_dataset(model, test_set, args.epsilon, settings=attack_settings(args),
                              device=device, keep_images=True, progress=progress,
                              desc=f"{args.attack} eps {args.epsilon:g}/255")
    written = save_panels(clean, out_dir, adv)
    record_outputs(written)
    # A rerun with fewer images must not leave its previous panels beside the new ones.
    remove_own_outputs(out_dir, panels.pattern, keep=written)
    print(f"wrote {len(written) - 1} panels and the contact sheet {written[-1]}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "test": cmd_test, "visualize": cmd_visualize,
}
