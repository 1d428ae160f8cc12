"""``patchguard benchmark --baselines``: anomalib's detectors beside PatchGuard in one table.

Offline and tiny: a 2-epoch test_vit PatchGuard, random-init ResNet-18 PatchCore and PaDiM on a
64 px generated class, PGD-2 at 2 and 8/255. The baseline run needs the anomalib extra; the
missing-extra and table tests do not.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from patchguard.cli import main
from patchguard.evaluation.report.tables import class_table

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end

TINY_FLAGS = [  # test_cli's tiny PatchGuard: test_vit, 64 px, 2 epochs
    "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
    "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01", "0.05",
    "--epochs", "2", "--batch-size", "4", "--steps-train", "2", "--workers", "0",
    "--device", "cpu", "--quiet",
]

SETTINGS = [("clean", 0.0), ("pgd", 2.0), ("pgd", 8.0)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A PatchGuard checkpoint of class widget under ckpts/, and the benchmark command."""
    pytest.importorskip("anomalib")
    root = tmp_path_factory.mktemp("bench_baselines")
    make_mvtec_class(root / "data")
    assert main(["train", "--dataset", "mvtec", "--dataset-dir", str(root / "data"),
                 "--class_name", "widget", "--output-dir", str(root / "ckpts" / "widget"),
                 *TINY_FLAGS]) == 0
    command = ["benchmark", "--classes", "widget", "--checkpoint-dir", str(root / "ckpts"),
               "--epsilon-test", "2", "8", "--steps-test", "2", "--attack", "pgd",
               "--gallery", "0", "--batch-size", "8", "--device", "cpu", "--quiet",
               "--baselines", "patchcore", "padim"]
    assert main(command) == 0
    return root, command


def _rows(root):
    return json.loads((root / "ckpts" / "benchmark.json").read_text())


@pytest.mark.slow
def test_one_row_per_method_and_setting(sweep):
    root, _ = sweep
    rows = _rows(root)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    assert methods == ["PatchGuard", "PatchCore", "PaDiM"]
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        assert [(r["attack"], r["epsilon"]) for r in own] == SETTINGS
        assert all(r["class_name"] == "widget" and r["dataset"] == "mvtec" and
                   r["n_images"] == 8 for r in own)
        assert [r["steps"] for r in own] == [0, 2, 2]
    attacked = {r["method"]: r for r in rows if r["attack"] == "pgd"}
    assert attacked["PatchGuard"]["objective"] == "mask"  # the paper's faithful PGD
    for method, baseline in (("PatchCore", "patchcore"), ("PaDiM", "padim")):
        row = attacked[method]
        assert row["objective"] == "score" and "needs patch logits" in row["objective_note"]
        assert row["baseline"] == baseline and row["backbone"] == "resnet18"
        assert row["pretrained"] is False and row["model_image_size"] == 64
        assert row["checkpoint"].endswith(f"widget/baselines/{baseline}.pt")


@pytest.mark.slow
def test_baseline_clean_rows_match_sklearn_on_the_stored_model(sweep):
    """The clean image AUROC of each baseline row against sklearn on the saved checkpoint's
    scores of the PIL-loaded test images: no evaluator involved."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from patchguard.baselines import load_baseline

    root, _ = sweep
    cls = root / "data" / "widget"
    files = sorted((cls / "test" / "good").glob("*.png")) + sorted(
        (cls / "test" / "spot").glob("*.png"))
    labels = np.array([f.parent.name == "spot" for f in files], int)
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS))
                       for f in files]) / 255.0
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    for row in (r for r in _rows(root) if r["method"] != "PatchGuard" and r["attack"] == "clean"):
        detector, _ = load_baseline(row["checkpoint"])
        with torch.no_grad():
            scores = detector(x)[0].numpy()
        assert row["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


@pytest.mark.slow
def test_markdown_csv_plot_and_page_hold_every_method(sweep):
    root, _ = sweep
    out = root / "ckpts"
    table = (out / "benchmark.md").read_text()
    # both epsilons, one column each; 64-px images: 8/255 is the headline
    assert ("| class | method | clean image | attacked image 2/255 | attacked image 8/255 "
            "(headline) | clean pixel | attacked pixel 2/255 | attacked pixel 8/255 (headline) |"
            ) in table
    for method in ("PatchGuard", "PatchCore", "PaDiM"):
        assert f"| widget | {method} |" in table and f"| **mean** | {method} |" in table
    assert "pgd objective: PatchGuard: mask; PatchCore, PaDiM: score" in table
    rows = _rows(root)
    with open(out / "benchmark.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [(r["method"], r["attack"], float(r["epsilon"])) for r in records] == [
        (r["method"], r["attack"], r["epsilon"]) for r in rows]
    assert {r["backbone"] for r in records if r["method"] != "PatchGuard"} == {"resnet18"}
    assert (out / "benchmark_vs_epsilon.png").stat().st_size > 1000
    page = (out / "benchmark.html").read_text()
    assert 'data-field="method" data-value="PaDiM"' in page


@pytest.mark.slow
def test_rerun_trains_and_evaluates_no_baseline_and_resumes_a_missing_one(sweep, capsys):
    root, command = sweep
    folder = root / "ckpts" / "widget" / "baselines"
    # (hidden files: the manifest of what patchguard wrote there)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}
    assert set(kept) == {"patchcore.pt", "patchcore_rows.json", "padim.pt", "padim_rows.json"}
    before = [r for r in _rows(root) if r["method"] != "PatchGuard"]
    capsys.readouterr()
    assert main(command) == 0
    assert "PatchCore rows read back" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()
            if not p.name.startswith(".")} == kept
    # read back, not recomputed: even the timing fields are the stored ones
    assert [r for r in _rows(root) if r["method"] != "PatchGuard"] == before
    # an interrupted sweep: PaDiM never ran; the rerun trains it alone
    (folder / "padim.pt").unlink()
    (folder / "padim_rows.json").unlink()
    assert main(command) == 0
    assert (folder / "padim.pt").is_file() and (folder / "padim_rows.json").is_file()
    assert (folder / "patchcore.pt").stat().st_mtime_ns == kept["patchcore.pt"]
    assert (folder / "patchcore_rows.json").stat().st_mtime_ns == kept["patchcore_rows.json"]
    # other epsilons: the stored model is attacked again, not retrained
    stamp = (folder / "patchcore.pt").stat().st_mtime_ns
    other = [*command]
    other[other.index("--epsilon-test") + 1: other.index("--epsilon-test") + 3] = ["4"]
    assert main(other) == 0
    rows = [r for r in _rows(root) if r["method"] == "PatchCore"]
    assert [(r["attack"], r["epsilon"]) for r in rows] == [("clean", 0.0), ("pgd", 4.0)]
    assert (folder / "patchcore.pt").stat().st_mtime_ns == stamp


def test_missing_anomalib_names_the_extra_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "anomalib", None)  # import anomalib raises ImportError
    code = main(["benchmark", "--classes", "widget", "--checkpoint-dir", str(tmp_path),
                 "--baselines", "patchcore", "--quiet"])
    assert code == 2
    assert "pip install 'patchguard[anomalib]'" in capsys.readouterr().err
    assert not (tmp_path / "benchmark.md").exists()


def _row(method, attack, eps, image, pixel, objective=None, **extra):
    return {"method": method, "attack": attack, "epsilon": eps, "image_auroc": image,
            "pixel_auroc": pixel, "objective": objective, "steps": 10 if eps else 0, **extra}


def test_class_table_gives_each_method_its_rows_and_mean():
    skipped = "pgd/mask/10 steps (needs patch logits)"
    results = {
        "a": [_row("PatchGuard", "clean", 0, 0.9, 0.8), _row("PatchGuard", "pgd", 8, 0.5, 0.4,
                                                              "mask"),
              _row("PatchCore", "clean", 0, 1.0, 0.7), _row("PatchCore", "pgd", 8, 0.0, 0.2,
                                                            "score"),
              _row("PatchCore", "standard", 8, 0.0, 0.1, members="x", members_skipped=skipped)],
        "b": [_row("PatchGuard", "clean", 0, 0.7, 0.6), _row("PatchGuard", "pgd", 8, 0.3, 0.2,
                                                              "mask"),
              _row("PatchCore", "clean", 0, 0.8, 0.5), _row("PatchCore", "pgd", 8, 0.2, 0.4,
                                                            "score")],
    }
    lines = class_table(results).splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == ("| class | method | clean image | pgd image | standard image | "
                        "clean pixel | pgd pixel | standard pixel |")
    assert table[2:] == [
        "| a | PatchGuard | 0.9000 | 0.5000 | n/a | 0.8000 | 0.4000 | n/a |",
        "| b | PatchGuard | 0.7000 | 0.3000 | n/a | 0.6000 | 0.2000 | n/a |",
        "| **mean** | PatchGuard | 0.8000 | 0.4000 | n/a | 0.7000 | 0.3000 | n/a |",
        "| a | PatchCore | 1.0000 | 0.0000 | 0.0000 | 0.7000 | 0.2000 | 0.1000 |",
        "| b | PatchCore | 0.8000 | 0.2000 | n/a | 0.5000 | 0.4000 | n/a |",
        "| **mean** | PatchCore | 0.9000 | 0.1000 | 0.0000 | 0.6000 | 0.3000 | 0.1000 |",
    ]
    text = "\n".join(lines)
    assert "pgd objective: PatchGuard: mask; PatchCore: score" in text
    assert f"standard for PatchCore: without {skipped}" in text
    # one method: the table of before, without a method column
    only = class_table({"a": results["a"][:2]})
    assert "| class | clean image | attacked image |" in only and "method" not in only
