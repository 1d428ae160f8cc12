import json
import logging

import pytest

from patchguard.demo.run import _each_line_once, run_demo, summary_table

from helpers.models import TINY_BACKBONE

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end


def test_demo_end_to_end_with_a_tiny_model(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="patchguard")
    rows = run_demo(
        tmp_path, classes=["washer"], image_size=64, device="cpu", progress=False,
        train_overrides={"backbone": TINY_BACKBONE, "pretrained": False, "epochs": 1,
                         "feature_layers": [2], "reg_layers": [1, 2],
                         "reg_coefficients": [0.01, 0.05], "workers": 0},
        data_overrides={"n_train": 4, "n_test_good": 2, "n_test_per_defect": 1},
    )
    assert {(r["adv_train"], r["epsilon"]) for r in rows} == {
        (adv, eps) for adv in (True, False) for eps in (0.0, 2.0, 8.0)}
    # the robust-advtrain preset (issue 12) beside the same recipe without adversarial training
    assert {r["preset"] for r in rows} == {"robust-advtrain"}
    # standard beside PGD, bounded: both recipes, 8/255, a fixed subset, labelled
    std_rows = [r for r in rows if r["attack"] == "standard"]
    assert sorted(r["adv_train"] for r in std_rows) == [False, True]
    std = std_rows[0]
    assert std["epsilon"] == 8.0 and std["n_images"] == 4
    assert std["members"].startswith("apgd/score/20 steps") and "square/score/100" in std["members"]
    assert std["standard_budget"].startswith("custom") and "2 normal, 2 anomalous" in std["subset"]
    assert std["images_per_s"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert (tmp_path / "robustness.png").exists()
    sheet = tmp_path / "runs/washer/adversarial/visualization/contact_sheet.png"
    assert sheet.exists()
    assert (tmp_path / "runs/washer/no_adv_train/last.pt").exists()
    out = capsys.readouterr().out
    assert "img clean" in out and "results JSON" in out
    assert "std* img 8" in out and "not the citable standard" in out
    assert "the robust-advtrain preset, 1 epoch:" in out
    # It speaks only when something is wrong: nothing about its own classes or thresholds.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "thresholds from" not in caplog.text and "mvtec" not in caplog.text


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
