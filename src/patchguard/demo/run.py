"""The offline demo: build a small data set, train with and without adversarial training, attack,
report and draw heatmaps, all without network access."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..adversarial.settings import AttackSettings
from ..config import build_config
from ..data.datasets import TestDataset, load_test_set
from ..evaluation.evaluator import evaluate, evaluate_with_predictions
from ..evaluation.report.headline import EPSILON_RULE, headline_epsilon
from ..evaluation.report.panels import save_panels
from ..evaluation.report.plots import plot_robustness
from ..evaluation.report.tables import render_table, write_results
from ..models.factory import load_model
from ..training.trainer import train
from ..utils import checks
from ..utils.device import resolve_device
from ..utils.files import atomic_write_text
from .dataset import DEMO_CLASSES, build_demo_dataset

# Sized so that the whole demo runs in minutes on a 2-core CPU.
DEMO_IMAGE_SIZE = 112
# 29 training images: 8 are held out of the backbone fine-tuning for its feature-stability
# figures (its card), the memory bank takes all 29; the demo sets no decision thresholds, so no
# validation split (no scoring pass, no threshold note per model).
DEMO_DATA = {"n_train": 29, "n_test_good": 12, "n_test_per_defect": 3}
# The recipe pair (issue 21): the ``robust-features`` preset (the backbone fine-tuned without
# labels, cached, then a kNN memory bank: no adversarial training) beside its non-robust twin,
# the same preset with --no-adv-train (the bank on the original backbone). workers 0: on a
# 2-core machine a loader process only competes with the work. The textures need no masks and
# the washer ships its own, so no mask generation.
DEMO_PRESET = "robust-features"
DEMO_RECIPES = (("robust-features", True), ("twin", False))
DEMO_TRAIN = {"preset": DEMO_PRESET, "workers": 0, "auto_foreground": False, "val_fraction": 0.0}
# Clean on every test image; then, on a fixed subset (evenly spaced among the normal and among
# the anomalous ones, as many as the 10-minute budget allows), the paper's own attack (PGD-10
# on its mask objective) and ``standard`` (the citable ensemble: APGD-100 on the score and on
# the map, PGD-10 on the mask, Square-1000), both at both epsilons, on the same images.
# Square-1000 on the robust model at 2/255 is most of the cost: ~25 CPU s per 112 px image.
DEMO_EVAL = {"epsilons": (0, 2, 8), "steps": 10}
DEMO_STANDARD = {"epsilons": (2.0, 8.0), "per_label": 2}
# Two of the four classes by default, so that the fine-tuning (~95 CPU s per class) and the
# attacks fit the 10 minutes on one core: brick, where the preset holds at 2/255 in the
# study, and gravel, where it does not (--classes takes any of the four, ~4 min per class).
DEMO_DEFAULT_CLASSES = ("brick", "gravel")


class _SayOnce(logging.Filter):
    """Let each distinct log line through once: the demo repeats one recipe for every class and
    variant, and the same notes (offline weights, few held-out images) would repeat each time."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


@contextlib.contextmanager
def _each_line_once() -> Iterator[None]:
    # One filter per handler: a shared one would let a record reach only the first handler.
    filters = {handler: _SayOnce() for handler in logging.getLogger().handlers}
    for handler, once in filters.items():
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler, once in filters.items():
            handler.removeFilter(once)


@contextlib.contextmanager
def _notes_off() -> Iterator[None]:
    """Only warnings and errors from patchguard while the demo runs: its notes (offline weights,
    cache hits, memory-bank sizes) are about the demo itself; it prints its own progress."""
    package = logging.getLogger("patchguard")
    level = package.level
    package.setLevel(max(logging.WARNING, package.getEffectiveLevel()))
    try:
        yield
    finally:
        package.setLevel(level)


def run_demo(
    output_dir: str | Path = "patchguard_demo",
    classes: Sequence[str] | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    compare: bool = True,
    device: str = "auto",
    progress: bool = True,
    train_overrides: dict[str, Any] | None = None,
    data_overrides: dict[str, Any] | None = None,
    standard_per_label: int | None = None,
) -> list[dict[str, Any]]:
    """Run the whole demo and return the result rows (also written to OUTPUT/results.json).

    ``epochs`` are the robust backbone fine-tuning's (the preset's ``robustify_epochs``);
    ``standard_per_label`` the normal and the anomalous test images each that ``standard``
    attacks. ``train_overrides`` / ``data_overrides`` change the recipe or data set size
    (tests use them to run the demo with a tiny random ViT).
    """
    per_label = checks.integer(
        "standard images (--standard-images)",
        DEMO_STANDARD["per_label"] if standard_per_label is None else standard_per_label, 1,
        fix="give 1 or more normal and anomalous test images each")
    with _notes_off(), _each_line_once():
        return _run_demo(output_dir, classes, epochs, image_size, compare, device, progress,
                         train_overrides, data_overrides, per_label)


def _run_demo(
    output_dir: str | Path,
    classes: Sequence[str] | None,
    epochs: int | None,
    image_size: int | None,
    compare: bool,
    device: str,
    progress: bool,
    train_overrides: dict[str, Any] | None,
    data_overrides: dict[str, Any] | None,
    standard_per_label: int,
) -> list[dict[str, Any]]:
    started = time.perf_counter()
    out = Path(output_dir)
    size = image_size or DEMO_IMAGE_SIZE
    classes = list(classes or DEMO_DEFAULT_CLASSES)
    unknown = sorted(set(classes) - set(DEMO_CLASSES))
    if unknown:
        raise ValueError(f"unknown demo class(es) {unknown}; choose from {list(DEMO_CLASSES)}")
    data_root = out / "data"
    print(f"[1/3] building the demo data set in {data_root} ...")
    build_demo_dataset(data_root, classes=classes, image_size=size,
                       **{**DEMO_DATA, **(data_overrides or {})})
    torch_device = resolve_device(device)

    recipes = DEMO_RECIPES if compare else DEMO_RECIPES[:1]
    all_rows: list[dict[str, Any]] = []
    print(f"[2/3] {len(classes)} class(es) x {len(recipes)} recipes on {torch_device}: the "
          f"{DEMO_PRESET} preset" + (" beside its twin (--no-adv-train)" if compare else ""))
    for class_name in classes:
        test_set = load_test_set("demo", data_root, class_name, size)
        subset = standard_subset(test_set, standard_per_label)
        for recipe, robust in recipes:
            run_dir = out / "runs" / class_name / recipe.replace("-", "_")
            config = build_config(
                DEMO_TRAIN["preset"],
                overrides={
                    **DEMO_TRAIN,
                    "dataset": "demo",
                    "dataset_dir": str(data_root),
                    "class_name": class_name,
                    "output_dir": str(run_dir),
                    "image_size": size,
                    "adv_train": robust,
                    "device": str(torch_device),
                    **({"robustify_epochs": epochs} if epochs else {}),
                    **(train_overrides or {}),
                },
            )
            print(f"  {class_name} / {recipe}: {_what_it_trains(config)}", flush=True)
            lap = time.perf_counter()
            # The demo's output folder is its own: a rerun rebuilds every model afresh (the
            # fine-tuned backbone comes from the cache when the settings and images match).
            last = train(config, progress=progress, overwrite=True)
            model, _ = load_model(last, torch_device)
            keep = robust and not _is_twin(recipe)
            rows = evaluate(model, test_set, epsilons=(0.0,), device=torch_device,
                            progress=progress)
            attacked, predictions = evaluate_with_predictions(
                model, subset, epsilons=tuple(DEMO_EVAL["epsilons"]),
                steps=DEMO_EVAL["steps"], device=torch_device, progress=progress,
                keep_images=keep)
            rows += [row for row in attacked if row["epsilon"] > 0]
            rows += _standard_rows(model, subset, torch_device, progress)
            described = _describe_subset(subset, len(test_set))
            for row in rows[1:]:
                row["subset"] = described
            meta = {"dataset": "demo", "class_name": class_name, "recipe": recipe,
                    "adv_train": robust, "preset": config.preset,
                    "robustify_epochs": config.robustify_epochs if robust else 0,
                    "image_size": size, "checkpoint": str(last)}
            write_results(run_dir / "results.json", rows, meta)
            all_rows.extend({**row, **meta} for row in rows)
            print(f"  {class_name} / {recipe}: done in {time.perf_counter() - lap:.0f} s",
                  flush=True)
            if keep:
                clean, attacked = predictions[0.0], predictions[float(DEMO_EVAL["epsilons"][-1])]
                save_panels(clean, run_dir / "visualization", attacked)
    results_path = out / "results.json"
    atomic_write_text(results_path, json.dumps(all_rows, indent=2) + "\n")
    plot_path = plot_robustness(all_rows, out / "robustness.png")
    print("[3/3] results")
    print(summary_table(all_rows))
    minutes = (time.perf_counter() - started) / 60
    first = recipes[0][0].replace("-", "_")
    print(f"\nfinished in {minutes:.1f} min")
    print(f"results JSON:  {results_path}")
    print(f"plot:          {plot_path}")
    print(f"checkpoints:   {out / 'runs' / '<class>' / '<recipe>' / 'last.pt'}")
    print(f"heatmaps:      {out / 'runs' / '<class>' / first / 'visualization'}"
          "/contact_sheet.png")
    print(f"per-run table: patchguard test --checkpoint {out / 'runs' / classes[0] / first}"
          "/last.pt --attack standard --epsilon-test 0 2 8")
    return all_rows


def _is_twin(recipe: str) -> bool:
    return recipe == DEMO_RECIPES[1][0]


def _what_it_trains(config: Any) -> str:
    """One line on what a recipe builds (the robust one's fine-tuning may come from the cache)."""
    if config.adv_train and config.robustify_epsilon > 0:
        epochs = config.robustify_epochs
        return (f"the backbone fine-tuned without labels ({epochs} epoch{'s' * (epochs != 1)}, "
                f"PGD-{config.robustify_steps} at {config.robustify_epsilon:g}/255; from the "
                f"cache if an earlier run made it), then a {config.head} head on it")
    if config.adv_train:
        return f"training {config.epochs} epochs"
    return f"a {config.head} head on the original backbone, nothing made robust"


def _standard_rows(model: Any, subset: TestDataset, device: Any, progress: bool
                   ) -> list[dict[str, Any]]:
    """The demo's ``standard`` rows (see :data:`DEMO_STANDARD`), on ``subset``."""
    # Image metrics only: standard then stops attacking an image once no reported number can
    # change (exact; docs/evaluation-speed.md), which lets it cover more images in the budget.
    settings = AttackSettings(attacks=("standard",), epsilons=DEMO_STANDARD["epsilons"],
                              steps=DEMO_EVAL["steps"], pixel_metrics=False)
    return evaluate(model, subset, settings, device=device, progress=progress)


def _describe_subset(subset: TestDataset, n_test: int) -> str:
    normal = sum(1 for r in subset.records if r.label == 0)
    return (f"{len(subset)} of {n_test} test images ({normal} normal, "
            f"{len(subset) - normal} anomalous, evenly spaced)")


def standard_subset(test_set: TestDataset, per_label: int) -> TestDataset:
    """A fixed subset: ``per_label`` normal and anomalous test images, evenly spaced in order."""
    chosen = []
    for label in (0, 1):
        records = [r for r in test_set.records if r.label == label]
        step = max(len(records) / per_label, 1.0)
        chosen += [records[int(i * step)] for i in range(min(per_label, len(records)))]
    return TestDataset(chosen, test_set.image_size)


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per class and recipe: image and pixel AUROC clean, image AUROC under the paper's PGD at
    each epsilon, then under ``standard`` (image and pixel) at each of its epsilons; a mean
    row per recipe and a footnote that says which epsilon is the headline for the image size."""
    pgd_rows = [r for r in rows if r.get("attack", "pgd") != "standard"]
    std_rows = [r for r in rows if r.get("attack") == "standard"]
    pgd_eps = sorted({r["epsilon"] for r in pgd_rows if r["epsilon"] > 0})
    std_eps = sorted({r["epsilon"] for r in std_rows})
    steps = max((r.get("steps") or 0 for r in pgd_rows if r["epsilon"] > 0), default=0)
    size = next((r["image_size"] for r in rows if r.get("image_size")), None)
    headline = headline_epsilon(size) if size else None

    def eps_label(e: float) -> str:
        return f"{e:g}/255" + ("*" if e == headline else "")

    # standard's pixel columns only where it reported them (the demo runs it for the image
    # metrics, which lets it stop early)
    std_pixels = any(r.get("pixel_auroc") is not None for r in std_rows)
    columns = ([("clean", "image_auroc", 0.0), ("clean", "pixel_auroc", 0.0)]
               + [("pgd", "image_auroc", e) for e in pgd_eps]
               + [("pgd", "pixel_auroc", e) for e in pgd_eps]
               + [("standard", "image_auroc", e) for e in std_eps]
               + [("standard", "pixel_auroc", e) for e in std_eps if std_pixels])
    header = ["class", "recipe", "img clean", "pix clean"]
    header += [f"PGD-{steps} img {eps_label(e)}" for e in pgd_eps]
    header += [f"PGD-{steps} pix {eps_label(e)}" for e in pgd_eps]
    header += [f"std img {eps_label(e)}" for e in std_eps]
    header += [f"std pix {eps_label(e)}" for e in std_eps if std_pixels]
    found: dict[tuple[str, str], dict[tuple[str, float], dict[str, Any]]] = {}
    for row in rows:
        kind = "standard" if row.get("attack") == "standard" else (
            "clean" if row["epsilon"] == 0 else "pgd")
        found.setdefault((row["class_name"], _recipe_of(row)), {})[(kind, row["epsilon"])] = row
    body: list[list[Any]] = []
    per_recipe: dict[str, list[list[float | None]]] = {}
    for (class_name, recipe), by in found.items():
        values = [by.get((kind, e), {}).get(metric) for kind, metric, e in columns]
        per_recipe.setdefault(recipe, []).append(values)
        body.append([class_name, recipe, *values])
    if len(found) > len(per_recipe):
        for recipe, table in per_recipe.items():
            means = [None if None in column else sum(column) / len(column)
                     for column in zip(*table)]
            body.append(["mean", recipe, *means])
    title = "AUROC, clean and attacked (L-infinity, epsilon in 1/255)"
    first = rows[0]
    if first.get("preset"):
        title += (f"; {first['preset']} = the preset (its backbone fine-tuned without labels, "
                  f"{_epochs(first.get('robustify_epochs'))}), twin = the same with "
                  "--no-adv-train") if "recipe" in first else f"; the {first['preset']} preset"
    text = title + "\n" + render_table(header, body, digits=3)
    notes = []
    clean = next((r for r in pgd_rows if r["epsilon"] == 0), None)
    if clean is not None:
        notes.append(f"clean: all {clean.get('n_images', '?')} test images per class")
    if pgd_eps:
        notes.append(f"PGD-{steps} = the paper's attack on its mask objective (it can overstate "
                     "robustness); std = standard, per image and metric the worst of "
                     "APGD-100 on the score and on the map, PGD-10 on the mask and Square-1000")
    attacked = next((r for r in rows if r["epsilon"] > 0), None)
    if attacked is not None:
        notes.append(f"attacked: {attacked.get('subset', 'all test images')} per class")
    if headline is not None:
        notes.append(f"* the headline epsilon for {size} px images: {headline:g}/255 "
                     f"({EPSILON_RULE}); both are shown")
    return text + "".join(f"\n{note}" for note in notes)


def _epochs(count: Any) -> str:
    return f"{count} epoch{'s' * (count != 1)}"


def _recipe_of(row: dict[str, Any]) -> str:
    if "recipe" in row:
        return str(row["recipe"])
    return "adv" if row.get("adv_train", True) else "no-adv"
