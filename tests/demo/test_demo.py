import json
import logging

import pytest

from patchguard.demo.run import _each_line_once, run_demo, summary_table
from patchguard.evaluation.evaluator import TARGETS_MASKS
from patchguard.evaluation.report.headline import headline_epsilon

from helpers.models import TINY_BACKBONE

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end


@pytest.mark.slow
def test_demo_end_to_end_with_a_tiny_model(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="patchguard")
    rows = run_demo(
        tmp_path / "demo", classes=["washer"], image_size=64, device="cpu", progress=False,
        epochs=1, standard_per_label=2,
        train_overrides={"backbone": TINY_BACKBONE, "pretrained": False,
                         "feature_layers": [2], "robustify_images": [],
                         "workers": 0},
        data_overrides={"n_train": 12, "n_test_good": 3, "n_test_per_defect": 1},
    )
    # the robust-features preset beside its twin (the same preset with --no-adv-train)
    assert {r["preset"] for r in rows} == {"robust-features"}
    assert {(r["recipe"], r["adv_train"]) for r in rows} == {
        ("robust-features", True), ("twin", False)}
    # the robust one's backbone was fine-tuned first (1 epoch, cached), the twin's was not
    cached = list((tmp_path / "cache" / "robust_backbones").glob("washer-*.safetensors"))
    assert len(cached) == 1
    assert {r["robustify_epochs"] for r in rows if r["adv_train"]} == {1}
    assert {r["robustify_epochs"] for r in rows if not r["adv_train"]} == {0}
    # clean on every test image; the paper's PGD and standard (the citable members) at 2/255
    # and 8/255 on the same fixed subset (standard for the image metrics only), both models
    pgd = {(r["recipe"], r["epsilon"]) for r in rows if r["attack"] != "standard"}
    assert pgd == {(rec, e) for rec in ("robust-features", "twin") for e in (0.0, 2.0, 8.0)}
    std_rows = [r for r in rows if r["attack"] == "standard"]
    assert sorted((r["recipe"], r["epsilon"]) for r in std_rows) == [
        ("robust-features", 2.0), ("robust-features", 8.0), ("twin", 2.0), ("twin", 8.0)]
    std = std_rows[0]
    assert std["n_images"] == 4 and "2 normal, 2 anomalous" in std["subset"]
    assert std["standard_budget"] == "fixed" and std["pixel_auroc"] is None
    assert std["targets"] == TARGETS_MASKS  # the masks still steer the attacks
    assert rows[0]["n_images"] == 3 + 5 and rows[0]["epsilon"] == 0  # clean: every test image
    assert all(r["n_images"] == 4 for r in rows if r["epsilon"] > 0)  # attacked: the subset
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved == rows
    assert (tmp_path / "demo" / "robustness.png").exists()
    sheet = tmp_path / "demo/runs/washer/robust_features/visualization/contact_sheet.png"
    assert sheet.exists()
    assert (tmp_path / "demo/runs/washer/twin/last.pt").exists()
    out = capsys.readouterr().out
    assert "img clean" in out and "results JSON" in out
    assert "std img 2/255" in out and "std img 8/255*" in out
    assert "attacked: 4 of 8 test images (2 normal, 2 anomalous, evenly spaced) per class" in out
    assert "the headline epsilon for 64 px images: 8/255 (2/255 for 224 px and up" in out
    # It speaks only when something is wrong: no notes about its own classes, thresholds,
    # masks or weights, no warnings.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_bad_standard_image_count_is_refused_before_any_work(tmp_path, capsys):
    from patchguard.cli import main

    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--standard-images", "0"]) == 2
    err = capsys.readouterr().err
    assert "--standard-images" in err and "0" in err and "1 or more" in err
    assert not (tmp_path / "demo").exists()


def test_headline_epsilon_follows_the_image_size():
    assert [headline_epsilon(s) for s in (64, 112, 223, 224, 256)] == [8, 8, 8, 2, 2]


def test_summary_table_means():
    rows = [dict(class_name=c, adv_train=adv, epsilon=e, steps=10, image_auroc=v,
                 pixel_auroc=None)
            for c, v in (("a", 0.8), ("b", 1.0)) for adv in (True,) for e in (0.0, 8.0)]
    table = summary_table(rows)
    mean_line = [line for line in table.splitlines() if line.startswith("mean")][0]
    assert "0.900" in mean_line and "n/a" in mean_line


def test_demo_lets_each_log_line_through_once_and_only_while_it_runs():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    root, log = logging.getLogger(), logging.getLogger("patchguard.somewhere")
    handler, level = Keep(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with _each_line_once():
            for class_name in ("brick", "grass", "brick"):
                log.info("no hub weights here (offline)")
                log.warning("class %r is not a known class", class_name)
        log.info("no hub weights here (offline)")  # after the demo: nothing is filtered
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert [r.getMessage() for r in records] == [
        "no hub weights here (offline)", "class 'brick' is not a known class",
        "class 'grass' is not a known class", "no hub weights here (offline)"]
