"""``benchmark``: flags, classes, the files it writes.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import shutil

import pytest

from .common import (
    CLASS,
    assert_names_key,
    assert_refused,
)


@pytest.mark.slow
def test_benchmark_epsilon_zero_writes_the_clean_table(cli, finished_run, data, tmp_path):
    # B-eps0. Before the fixes: evaluates, then "error: max() arg is an empty sequence".
    root = tmp_path / "ck"
    (root / CLASS).mkdir(parents=True)
    shutil.copy(finished_run / "last.pt", root / CLASS / "last.pt")
    result = cli("benchmark", "--checkpoint-dir", root, "--classes", CLASS, "--dataset-dir",
                 data, "--device", "cpu", "--quiet", "--epsilon-test", "0")
    assert result.code == 0, result
    assert (root / "benchmark.md").is_file()


@pytest.mark.parametrize("key,flags,value", [
    ("epsilon_test", ["--epsilon-test", "-8"], "-8"),  # before the fixes: max() of empty
    ("steps_test", ["--steps-test", "-1"], "-1"),  # before the fixes: accepted
], ids=["B-eps-neg", "B-steps-neg"])
def test_benchmark_refuses_out_of_domain_flag(cli, finished_run, data, tmp_path, key, flags,
                                              value):
    root = tmp_path / "ck"
    (root / CLASS).mkdir(parents=True)
    shutil.copy(finished_run / "last.pt", root / CLASS / "last.pt")
    result = cli("benchmark", "--checkpoint-dir", root, "--classes", CLASS, "--dataset-dir",
                 data, "--device", "cpu", "--quiet", *flags)
    assert_refused(result, value)
    assert_names_key(result, key)


def test_benchmark_missing_class(cli, tmp_path):
    # B-class-x; passed before the fixes too
    assert_refused(cli("benchmark", "--checkpoint-dir", tmp_path, "--classes", "nope",
                       "--device", "cpu"), "nope")


def test_decided_benchmark_jobs_zero_is_refused(cli, tmp_path):
    assert_refused(cli("benchmark", "--checkpoint-dir", tmp_path, "--classes", "x", "--jobs",
                       "0"), "--jobs", "0")


# ============================================================================ past failures


@pytest.mark.parametrize("name", ["../escape_cls", "/tmp/abs_cls", ".."])
def test_benchmark_class_names_cannot_escape_the_checkpoint_dir(cli, data, tmp_path, name):
    # Formerly (security): benchmark --train --classes ../escape_cls --checkpoint-dir runs/bench
    # trained into runs/escape_cls/ with overwrite on.
    bench = tmp_path / "runs" / "bench"
    victim = tmp_path / "runs" / "escape_cls"
    victim.mkdir(parents=True)
    (victim / "last.pt").write_bytes(b"an earlier run")
    result = cli("benchmark", "--train", "--classes", name, "--checkpoint-dir", bench,
                 "--dataset-dir", data, "--device", "cpu", "--quiet")
    assert_refused(result, "--classes", "single folder name")
    assert (victim / "last.pt").read_bytes() == b"an earlier run"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["escape_cls"]


def test_benchmark_output_dir_keeps_files_it_did_not_write(cli, finished_run, data, tmp_path):
    # Formerly: benchmark --output-dir replaced any benchmark.md / .json / .csv.
    root = tmp_path / "ck"
    (root / CLASS).mkdir(parents=True)
    shutil.copy(finished_run / "last.pt", root / CLASS / "last.pt")
    out = tmp_path / "reports"
    out.mkdir()
    (out / "benchmark.md").write_text("my notes")
    argv = ["benchmark", "--checkpoint-dir", root, "--classes", CLASS, "--dataset-dir", data,
            "--device", "cpu", "--quiet", "--epsilon-test", "0", "--output-dir", out]
    assert_refused(cli(*argv), "--output-dir", "benchmark.md", "--overwrite")
    assert (out / "benchmark.md").read_text() == "my notes"
    assert cli(*argv, "--overwrite").code == 0
    assert cli(*argv).code == 0  # its own reports now
