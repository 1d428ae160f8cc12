import json
import subprocess
import sys

import pytest
from PIL import Image

from patchguard.cli import main
from patchguard.utils.checkpoint import load_checkpoint

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end

TINY_FLAGS = [
    "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
    "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01", "0.05",
    "--epochs", "2", "--batch-size", "4", "--steps-train", "2", "--workers", "0",
    "--device", "cpu", "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_mvtec_class(root / "data")
    code = main(["train", "--dataset", "mvtec", "--dataset-dir", str(root / "data"),
                 "--class_name", "widget", "--output-dir", str(root / "run"), *TINY_FLAGS])
    assert code == 0
    return root


def test_train_writes_last_pt_with_cli_values(trained):
    state = load_checkpoint(trained / "run" / "last.pt")
    assert state["config"]["image_size"] == 64
    assert state["config"]["pretrained"] is False
    assert state["config"]["preset"] == "paper"
    assert state["config"]["lr"] == 8e-4  # untouched paper default


def _independent_scores(trained):
    """Image scores and maps of the test set, from PIL-read files and sklearn: no evaluator."""
    import numpy as np
    import torch

    from patchguard.models.factory import load_model

    model, _ = load_model(trained / "run" / "last.pt")
    cls = trained / "data" / "widget"
    files = sorted((cls / "test" / "good").glob("*.png")) + sorted(
        (cls / "test" / "spot").glob("*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS))
                       for f in files]) / 255.0
    masks = np.zeros((len(files), 64, 64), bool)
    for i, f in enumerate(files):
        if f.parent.name == "spot":
            mask = Image.open(cls / "ground_truth" / "spot" / f"{f.stem}_mask.png")
            masks[i] = np.asarray(mask.resize((64, 64), Image.LANCZOS)) > 0
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    scores, maps = model.predict(x)
    labels = np.array([f.parent.name == "spot" for f in files], int)
    return labels, scores.numpy(), masks, maps.numpy()


@pytest.mark.slow
def test_test_prints_table_and_writes_json_rows(trained, capsys):
    from sklearn.metrics import roc_auc_score

    from patchguard.inference.card import results_path

    checkpoint = trained / "run" / "last.pt"
    before = checkpoint.read_bytes()
    out_json = trained / "rows.json"
    code = main(["test", "--checkpoint", str(checkpoint), "--epsilon-test",
                 "2", "8", "--steps-test", "2", "--json", str(out_json), "--quiet"])
    assert code == 0
    table = capsys.readouterr().out
    assert "image AUROC" in table
    rows = json.loads(out_json.read_text())
    assert [(r["attack"], r["epsilon"], r["steps"]) for r in rows] == [
        ("clean", 0.0, 0), ("pgd", 2.0, 2), ("pgd", 8.0, 2)]
    assert all(r["n_images"] == 8 and r["n_anomalous"] == 4 and r["class_name"] == "widget"
               for r in rows)
    # The clean row against an independent reference: files read with PIL, sklearn's AUROC.
    labels, scores, masks, maps = _independent_scores(trained)
    assert rows[0]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert rows[0]["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert f"{rows[0]['image_auroc']:.4f}" in table
    assert rows[1]["targets"] == "ground-truth masks"
    # The model card's results go to a sidecar; the checkpoint itself is not rewritten.
    assert checkpoint.read_bytes() == before
    card = json.loads(results_path(checkpoint).read_text())["results"]
    assert [r["epsilon"] for r in card] == [0.0, 2.0, 8.0]
    assert main(["info", "--checkpoint", str(checkpoint)]) == 0
    info = capsys.readouterr().out
    assert "evaluation results (from last.results.json)" in info
    assert f"image AUROC {rows[0]['image_auroc']:.4f}" in info


def test_visualize_writes_panels_and_contact_sheet(trained):
    out_dir = trained / "vis"
    code = main(["visualize", "--checkpoint", str(trained / "run" / "last.pt"), "--epsilon", "8",
                 "--steps", "2", "--output-dir", str(out_dir), "--quiet"])
    assert code == 0
    panels = sorted(out_dir.glob("0*.png"))
    assert len(panels) == 8
    sheet = Image.open(out_dir / "contact_sheet.png")
    assert sheet.size == (5 * 64, 8 * 64)  # five tiles per row, one row per image


def test_yaml_config_sets_flags_and_cli_wins(trained, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"dataset_dir: {trained / 'data'}\nclass-name: widget\nepochs: 1\nlr: 0.002\n"
        f"backbone: {TINY_BACKBONE}\npretrained: false\nimage_size: 64\nfeature_layers: [3]\n"
        "reg_layers: [3]\nreg_coefficients: [0.05]\nworkers: 0\ndevice: cpu\ndsc_hidden: 32\n"
    )
    code = main(["train", "--config", str(config), "--output-dir", str(tmp_path / "o"),
                 "--lr", "0.003", "--quiet"])
    assert code == 0
    saved = load_checkpoint(tmp_path / "o" / "last.pt")["config"]
    assert saved["epochs"] == 1 and saved["lr"] == 0.003 and saved["dsc_hidden"] == 32


def test_errors_are_clear_messages_not_tracebacks(tmp_path, capsys):
    code = main(["train", "--dataset-dir", str(tmp_path / "nope"), "--class-name", "x",
                 *TINY_FLAGS])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["test", "--checkpoint", str(bad), "--quiet"]) == 2
    assert "bad.pt is not a patchguard checkpoint: cannot be loaded safely" in \
        capsys.readouterr().err


def test_test_without_pixel_masks_reports_null(tmp_path, trained):
    make_mvtec_class(tmp_path / "data", masks=False)
    out_json = tmp_path / "rows.json"
    code = main(["test", "--checkpoint", str(trained / "run" / "last.pt"), "--dataset-dir",
                 str(tmp_path / "data"), "--steps-test", "1", "--json", str(out_json), "--quiet"])
    assert code == 0
    rows = json.loads(out_json.read_text())
    assert all(r["pixel_auroc"] is None for r in rows)
    assert rows[1]["targets"].startswith("all-ones")


@pytest.mark.slow
def test_cli_resume_continues_the_saved_run(tmp_path):
    make_mvtec_class(tmp_path / "data")
    base = ["train", "--dataset-dir", str(tmp_path / "data"), "--class-name", "widget",
            "--output-dir", str(tmp_path / "run"), "--preset", "fast", *TINY_FLAGS]
    base[base.index("--epochs") + 1] = "1"
    assert main(base) == 0
    assert main(["train", "--resume", "--output-dir", str(tmp_path / "run"), "--epochs", "2",
                 "--quiet"]) == 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2
    assert state["config"]["preset"] == "fast" and state["config"]["epochs"] == 2
    assert state["config"]["backbone"] == TINY_BACKBONE  # not reset to the paper defaults
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]
    # resuming a finished run without new flags trains nothing more (not 1000 epochs)
    assert main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_test_writes_csv_markdown_plot_and_sanity_notes(trained, capsys):
    out_json = trained / "sane" / "rows.json"
    code = main(["test", "--checkpoint", str(trained / "run" / "last.pt"), "--steps-test", "2",
                 "--attack", "pgd", "fgsm", "--sanity", "--json", str(out_json), "--quiet",
                 "--no-record", "--queries", "50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Sanity checks" in out and "Square (50 queries)" in out
    csv_lines = out_json.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("class_name,attack,objective,epsilon")
    assert len(csv_lines) == 1 + 3  # clean, pgd 8, fgsm 8
    markdown = out_json.with_suffix(".md").read_text()
    assert "| fgsm |" in markdown.replace("| widget ", "") and "Sanity checks" in markdown
    assert "Square (50 queries)" in markdown
    assert (trained / "sane" / "rows_vs_epsilon.png").exists()


def _cheap_standard(monkeypatch):
    """Standard with tiny budgets: what is checked is the wiring, not the strength."""
    from patchguard.adversarial import standard

    cheap = (standard.Member("apgd", "score", steps=2),
             standard.Member("square", "score", queries=10))
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", cheap)


@pytest.mark.slow
def test_test_runs_square_and_standard_and_lists_the_members(trained, capsys, monkeypatch):
    _cheap_standard(monkeypatch)
    out_json = trained / "std" / "rows.json"
    code = main(["test", "--checkpoint", str(trained / "run" / "last.pt"), "--epsilon-test", "8",
                 "--attack", "square", "standard", "--queries", "15", "--json", str(out_json),
                 "--quiet", "--no-record"])
    assert code == 0
    out = capsys.readouterr().out
    assert "standard: apgd/score/2 steps, square/score/10 queries" in out
    assert "15 queries" in out and "img/s" in out
    rows = json.loads(out_json.read_text())
    assert [(r["attack"], r["queries"]) for r in rows] == [
        ("clean", None), ("square", 15), ("standard", 10)]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "apgd/score/2 steps" in out_json.with_suffix(".md").read_text()


@pytest.mark.slow
def test_benchmark_writes_paper_style_table(trained, tmp_path):
    import shutil

    for name in ("widget",):
        (tmp_path / "ckpts" / name).mkdir(parents=True)
        shutil.copy(trained / "run" / "last.pt", tmp_path / "ckpts" / name / "last.pt")
    code = main(["benchmark", "--classes", "all", "--checkpoint-dir", str(tmp_path / "ckpts"),
                 "--steps-test", "1", "--quiet", "--attack", "pgd"])
    assert code == 0
    table = (tmp_path / "ckpts" / "benchmark.md").read_text()
    assert "| widget |" in table and "| **mean** |" in table
    rows = json.loads((tmp_path / "ckpts" / "benchmark.json").read_text())
    assert {r["class_name"] for r in rows} == {"widget"}
    # both of the field's epsilons by default; 64-px images: 8/255 is the headline
    assert [(r["attack"], r["epsilon"]) for r in rows] == [("clean", 0.0), ("pgd", 2.0),
                                                           ("pgd", 8.0)]
    assert "| attacked image 2/255 | attacked image 8/255 (headline) |" in table
    assert "Headline epsilon: 8/255 (64-px test images" in table
    assert main(["benchmark", "--classes", "nothere", "--checkpoint-dir",
                 str(tmp_path / "ckpts"), "--quiet"]) == 2


@pytest.mark.slow
def test_benchmark_reports_standard_beside_pgd_by_default(trained, tmp_path, monkeypatch):
    import shutil

    _cheap_standard(monkeypatch)
    (tmp_path / "ckpts" / "widget").mkdir(parents=True)
    shutil.copy(trained / "run" / "last.pt", tmp_path / "ckpts" / "widget" / "last.pt")
    assert main(["benchmark", "--classes", "widget", "--checkpoint-dir",
                 str(tmp_path / "ckpts"), "--steps-test", "1", "--quiet"]) == 0
    table = (tmp_path / "ckpts" / "benchmark.md").read_text()
    assert ("| class | clean image | pgd image 2/255 | standard image 2/255 | "
            "pgd image 8/255 (headline) | standard image 8/255 (headline) |") in table
    assert "standard (apgd/score/2 steps, square/score/10 queries)" in table
    rows = json.loads((tmp_path / "ckpts" / "benchmark.json").read_text())
    assert [r["attack"] for r in rows] == ["clean", "pgd", "pgd", "standard", "standard"]


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "patchguard", "--help"], capture_output=True,
                            text=True, check=True)
    assert "train" in result.stdout and "demo" in result.stdout


def test_data_foreground_for_every_class_then_info(tmp_path, capsys):
    for name in ("a", "b"):
        make_mvtec_class(tmp_path, name=name, foreground=False)
    assert main(["data", "foreground", "--dataset-dir", str(tmp_path), "--method", "full"]) == 0
    for name in ("a", "b"):
        masks = sorted((tmp_path / name / "train" / "foreground_mask").glob("*.png"))
        assert len(masks) == 8
        assert Image.open(masks[0]).getextrema() == (255, 255)
    capsys.readouterr()
    assert main(["data", "info", "--dataset-dir", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    for name in ("a", "b"):
        assert f"== mvtec / {name}  ({tmp_path / name})" in out
    assert out.count("foreground masks         8 of 8") == 2
    assert out.rstrip().endswith("2 class(es) OK")


@pytest.mark.slow
def test_benchmark_train_sweep_skips_finished_classes_and_resumes(tmp_path):
    for name in ("a", "b"):
        make_mvtec_class(tmp_path / "data", name=name)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"backbone: {TINY_BACKBONE}\npretrained: false\nimage_size: 64\nfeature_layers: [3]\n"
        "reg_layers: [3]\nreg_coefficients: [0.05]\ndsc_hidden: 32\nbatch_size: 4\n"
        "steps_train: 1\nworkers: 0\ndevice: cpu\n")
    sweep = ["benchmark", "--train", "--config", str(config), "--dataset-dir",
             str(tmp_path / "data"), "--classes", "all", "--checkpoint-dir",
             str(tmp_path / "runs"), "--epochs", "1", "--steps-test", "1", "--quiet",
             "--attack", "pgd"]
    assert main(sweep) == 0
    a_ckpt = tmp_path / "runs" / "a" / "last.pt"
    stamp = a_ckpt.stat().st_mtime_ns
    # an interrupted sweep: b lost its results and trains one more epoch on the rerun
    (tmp_path / "runs" / "b" / "benchmark_rows.json").unlink()
    sweep[sweep.index("--epochs") + 1] = "2"
    assert main(sweep) == 0
    assert a_ckpt.stat().st_mtime_ns == stamp  # finished class untouched
    assert load_checkpoint(tmp_path / "runs" / "b" / "last.pt")["epoch"] == 2  # resumed
    table = (tmp_path / "runs" / "benchmark.md").read_text()
    assert "| a |" in table and "| b |" in table


def _save(path, value, size=40, mode="RGB"):
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if mode == "L":
        array = np.zeros((size, size), np.uint8)
        array[10:20, 10:20] = 255
    else:
        array = np.clip(rng.normal(value, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "btad", "brats2021"])
def test_train_and_test_on_other_layouts(tmp_path, layout):
    """Trees written from docs/datasets.md's layout descriptions, trained and tested end to end."""
    root, cls = tmp_path / "data", "part"
    c = root / cls
    if layout == "folder":
        for i in range(4):
            _save(c / "train" / f"n{i}.png", 120)
            _save(c / "test" / "good" / f"g{i}.png", 120)
            _save(c / "test" / "dent" / f"d{i}.jpg", 200)
            _save(c / "masks" / f"d{i}_mask.png", 0, mode="L")
    elif layout == "btad":
        for i in range(4):
            _save(c / "train" / "ok" / f"{i:03d}.bmp", 120)
            _save(c / "test" / "ok" / f"{i:03d}.bmp", 120)
            _save(c / "test" / "ko" / f"{i:03d}.bmp", 200)
            _save(c / "ground_truth" / "ko" / f"{i:03d}.png", 0, mode="L")
    else:
        for i in range(4):
            _save(c / "train" / "normal" / f"s{i}_flair.png", 120)
            _save(c / "test" / "normal" / f"t{i}_flair.png", 120)
            _save(c / "test" / "tumor" / f"u{i}_flair.png", 200)
            _save(c / "ground_truth" / "tumor" / f"u{i}_seg.png", 0, mode="L")
    assert main(["data", "info", "--dataset", layout, "--dataset-dir", str(root), "--quick"]) == 0
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--epochs") + 1] = "1"
    assert main(["train", "--dataset", layout, "--dataset-dir", str(root), "--class-name", cls,
                 "--output-dir", str(tmp_path / "run"), *flags]) == 0
    out = tmp_path / "rows.json"
    assert main(["test", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--steps-test", "1",
                 "--json", str(out), "--quiet", "--no-record"]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["n_images"] == 8 and rows[0]["pixel_auroc"] is not None


@pytest.mark.slow
def test_train_flags_of_the_robustness_options_reach_the_config(tmp_path):
    make_mvtec_class(tmp_path / "data")
    flags = list(TINY_FLAGS)
    flags[flags.index("--epochs") + 1] = "1"
    code = main(["train", "--dataset-dir", str(tmp_path / "data"), "--class-name", "widget",
                 "--output-dir", str(tmp_path / "run"), *flags, "--train-attack", "fgsm-rs",
                 "--train-objective", "score", "--carry-perturbations", "--eps-ramp", "0.5",
                 "--late-steps-train", "4", "--late-fraction", "0.5", "--trades-weight", "0.5",
                 "--rank-weight", "2", "--frozen-blocks", "1", "--probe-every", "1",
                 "--free-replays", "3"])
    assert code == 0
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert (config["train_attack"], config["train_objective"], config["carry_perturbations"],
            config["eps_ramp"], config["late_steps_train"], config["late_fraction"],
            config["trades_weight"], config["frozen_blocks"], config["probe_every"],
            config["free_replays"], config["rank_weight"]) == (
        "fgsm-rs", "score", True, 0.5, 4, 0.5, 0.5, 1, 1, 3, 2.0)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert "probe_pgd" in log[-1]
    # an inconsistent pair is refused with the flag's name
    assert main(["train", "--dataset-dir", str(tmp_path / "data"), "--class-name", "widget",
                 "--output-dir", str(tmp_path / "run2"), *flags, "--train-attack", "n-fgsm",
                 "--carry-perturbations"]) != 0
