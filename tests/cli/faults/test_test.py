"""``test``: flags, broken test sets, the results files it writes.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .common import (
    assert_names_key,
    assert_refused,
    bomb_png,
    damaged_data,
    digest,
    truncate_file,
)


@pytest.mark.parametrize("verb", ["test", "visualize"])
def test_decompression_bomb_in_test_set(cli, tmp_path, finished_run, verb):
    # D-bomb-test / D-bomb-visualize. Before the fixes: DecompressionBombError traceback.
    root = damaged_data(tmp_path, lambda c: bomb_png(c / "test/good/000.png"))
    extra = (["--no-record", "--json", tmp_path / "r.json", "--steps-test", "1"]
             if verb == "test" else ["--output-dir", tmp_path / "vis", "--steps", "1"])
    result = cli(verb, "--checkpoint", finished_run / "last.pt", "--dataset-dir", root,
                 "--device", "cpu", "--quiet", *extra)
    assert_refused(result, "000.png")


def _bad_mask(cls: Path) -> None:
    Image.fromarray(np.full((13, 7), 255, np.uint8)).save(cls / "ground_truth/spot/000_mask.png")


@pytest.mark.parametrize("damage,needle", [
    (lambda c: truncate_file(c / "test/spot/000.png"), "000.png"),  # passed before the fixes too
    (lambda c: (c / "test/good/000.png").write_bytes(b""), "000.png"),  # passed before too
    (_bad_mask, "000_mask.png"),  # passed before the fixes too
    (lambda c: (c / "ground_truth/spot/001_mask.png").write_text("no"), "001_mask.png"),  # pass
    (lambda c: (c / "ground_truth/spot/001_mask.png").unlink(), "001"),  # passed before too
], ids=["D-trunc-img", "D-zero-img", "D-mask-size", "D-mask-corrupt", "D-mask-missing"])
def test_broken_test_set_files(cli, tmp_path, finished_run, damage, needle):
    root = damaged_data(tmp_path, damage)
    result = cli("test", "--checkpoint", finished_run / "last.pt", "--dataset-dir", root,
                 "--device", "cpu", "--quiet", "--steps-test", "1", "--no-record",
                 "--json", tmp_path / "r.json")
    assert_refused(result, needle)


# ============================================================================ test / benchmark


def _test_argv(ckpt: Path, tmp_path: Path, *extra: object) -> list[object]:
    return ["test", "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--json",
            tmp_path / "r.json", *extra]


TEST_BAD = [
    ("X-steps-neg", "steps_test", ["--steps-test", "-3"], "-3"),  # before: PGD row == clean row
    ("X-steps-0", "steps_test", ["--steps-test", "0"], "0"),  # before the fixes: accepted
    ("X-eps-neg", "epsilon_test", ["--epsilon-test", "-8"], "-8"),  # before: silently dropped
    ("X-eps-nan", "epsilon_test", ["--epsilon-test", "nan"], "nan"),  # before: silently dropped
    ("X-eps-big", "epsilon_test", ["--epsilon-test", "1000"], "1000"),  # before the fixes: accepted
    ("X-restarts-0", "restarts", ["--attack", "pgd-rs", "--restarts", "0"], "0"),  # failed before
    ("X-restarts-neg", "restarts", ["--attack", "apgd", "--restarts", "-1"], "-1"),  # failed before
    ("X-bs-0", "batch_size", ["--batch-size", "0"], "0"),  # passed before too (torch's words)
    ("X-workers-neg", "workers", ["--workers", "-1"], "-1"),  # before: torch's words, no value
    ("X-device-foo", "device", ["--device", "foo"], "foo"),  # before the fixes: RuntimeError
]


@pytest.mark.parametrize("key,flags,value", [c[1:] for c in TEST_BAD],
                         ids=[c[0] for c in TEST_BAD])
def test_test_refuses_out_of_domain_flag(cli, run_copy, tmp_path, key, flags, value):
    before = digest(run_copy)
    result = cli(*_test_argv(run_copy / "last.pt", tmp_path, *flags))
    assert_refused(result, value)
    assert_names_key(result, key)
    assert digest(run_copy) == before
    assert not (tmp_path / "r.json").exists()


def test_test_yaml_value_checked_like_its_flag(cli, run_copy, tmp_path):
    # X-yaml-steps-neg. Before the fixes: accepted (the PGD row equals the clean row).
    config = tmp_path / "t.yaml"
    config.write_text("steps_test: -3\n")
    result = cli(*_test_argv(run_copy / "last.pt", tmp_path, "--config", config))
    assert_refused(result, "-3")
    assert_names_key(result, "steps_test")


def test_test_leaves_the_checkpoint_alone_and_info_shows_the_results(cli, run_copy, tmp_path):
    # X-record. Before the fixes: test rewrites the checkpoint to store its results.
    ckpt = run_copy / "last.pt"
    before = digest(ckpt)
    result = cli("test", "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--steps-test", "1",
                 "--json", tmp_path / "elsewhere.json")
    assert result.code == 0, result
    assert digest(ckpt) == before
    info = cli("info", "--checkpoint", ckpt)
    assert info.code == 0 and "evaluation results" in info.text, info


@pytest.mark.parametrize("target", ["last.pt", "epoch_0003.pt"])
def test_test_json_never_overwrites_a_checkpoint(cli, run_copy, target):
    # X-json-is-ckpt / X-json-is-epoch. Before the fixes: the checkpoint is replaced by JSON.
    before = digest(run_copy)
    result = cli("test", "--checkpoint", run_copy / "last.pt", "--json", run_copy / target,
                 "--device", "cpu", "--quiet", "--steps-test", "1", "--no-record")
    assert_refused(result, target)
    assert digest(run_copy) == before


@pytest.mark.parametrize("case", ["X-json-dir", "X-ckpt-dir-results"])
def test_test_refuses_bad_json_targets_before_evaluating(cli, run_copy, tmp_path, case):
    target = run_copy if case == "X-json-dir" else run_copy / "last.results.json"
    before = digest(run_copy)
    result = cli("test", "--checkpoint", run_copy / "last.pt", "--json", target, "--device",
                 "cpu", "--quiet", "--steps-test", "1")
    assert_refused(result, "--json")
    assert digest(run_copy) == before


def test_decided_test_without_anomalous_images_warns(cli, finished_run, tmp_path):
    root = damaged_data(tmp_path, lambda c: [shutil.rmtree(c / d) for d in
                                             ("test/spot", "ground_truth")])
    result = cli("test", "--checkpoint", finished_run / "last.pt", "--dataset-dir", root,
                 "--device", "cpu", "--quiet", "--no-record", "--json", tmp_path / "r.json")
    assert result.code == 0, result
    assert "no anomalous test images" in result.text, result


def test_testing_an_imported_checkpoint_asks_for_the_data(cli, imported, data, tmp_path):
    # An imported checkpoint records no data set folder. Before: "class folder . does not exist".
    assert_refused(cli("test", "--checkpoint", imported, "--quiet"), "--dataset-dir",
                   "is not recorded")
    result = cli("test", "--checkpoint", imported, "--dataset-dir", data, "--steps-test", "1",
                 "--json", tmp_path / "r.json", "--device", "cpu", "--quiet")
    assert result.code == 0, result


# ============================================================================ past failures


def test_test_json_never_replaces_report_files_it_did_not_write(cli, finished_run, tmp_path):
    # Formerly (loss): test --json lab.json silently replaced lab.md, lab.csv and lab.html.
    lab = tmp_path / "lab"
    lab.mkdir()
    mine = {lab / "lab.md": "my notes", lab / "lab.csv": "my table", lab / "lab.html": "page"}
    for path, text in mine.items():
        path.write_text(text)
    argv = ["test", "--checkpoint", finished_run / "last.pt", "--device", "cpu", "--quiet",
            "--no-record", "--epsilon-test", "0", "--json", lab / "lab.json"]
    result = cli(*argv)
    assert_refused(result, "--json", "lab.", "--overwrite")
    assert all(path.read_text() == text for path, text in mine.items())
    assert not (lab / "lab.json").exists()
    assert cli(*argv, "--overwrite").code == 0  # on purpose
    assert (lab / "lab.md").read_text() != "my notes"
    assert cli(*argv).code == 0  # its own reports, replaced by a rerun


def test_api_evaluate_checkpoint_warns_about_0_1_epsilons(finished_run, data):
    # Formerly: evaluate_checkpoint(epsilons=(0, 0.5)) gave no warning; the CLI gives one.
    import patchguard

    with pytest.warns(UserWarning, match=r"0\.5 is in 1/255 units"):
        rows = patchguard.evaluate_checkpoint(finished_run / "last.pt", data, epsilons=(0, 0.5),
                                              steps=1, device="cpu", progress=False)
    assert [row["epsilon"] for row in rows] == [0, 0.5]


def test_report_output_never_replaces_an_unrelated_file(cli, finished_run, tmp_path):
    # Formerly (loss): report --output important.html overwrote an unrelated file.
    json_path = tmp_path / "r.json"
    assert cli("test", "--checkpoint", finished_run / "last.pt", "--device", "cpu", "--quiet",
               "--no-record", "--epsilon-test", "0", "--json", json_path).code == 0
    important = tmp_path / "important.html"
    important.write_text("<p>my page</p>")
    result = cli("report", json_path, "--output", important)
    assert_refused(result, "--output", "important.html", "--overwrite")
    assert important.read_text() == "<p>my page</p>"
    fresh = tmp_path / "fresh.html"
    assert cli("report", json_path, "--output", fresh).code == 0
    assert cli("report", json_path, "--output", fresh).code == 0  # its own page: replaced
    assert cli("report", json_path, "--output", important, "--overwrite").code == 0


@pytest.mark.parametrize("verb", ["test", "visualize"])
def test_reports_inside_the_data_set_are_refused(cli, finished_run, tmp_path, verb):
    # Formerly: test --json data/bottle/test/good/r.json wrote r_vs_epsilon.png among
    # the test images (and visualize its panels), which the next test then read as test images.
    root = damaged_data(tmp_path, lambda c: None)
    before = digest(root)
    inside = root / "bottle" / "test" / "good"
    extra = (["--json", inside / "r.json", "--no-record"] if verb == "test"
             else ["--output-dir", inside])
    result = cli(verb, "--checkpoint", finished_run / "last.pt", "--dataset-dir", root,
                 "--device", "cpu", "--quiet", "--epsilon-test" if verb == "test" else
                 "--epsilon", "0", *extra)
    assert_refused(result, "inside", "data set")
    assert digest(root) == before
