"""``info``: what the model card says about a checkpoint.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_info_says_when_recorded_results_belong_to_another_version(cli, run_copy, data):
    ckpt = run_copy / "last.pt"
    assert cli("test", "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--steps-test",
               "1").code == 0
    assert cli("train", "--output-dir", run_copy, "--resume", "--epochs", "4",
               "--quiet").code == 0
    info = cli("info", "--checkpoint", ckpt)
    assert info.code == 0 and "another version of this file (epoch 3)" in info.text, info


def test_info_says_no_results_when_there_are_none(cli, finished_run):
    # Formerly: info said "evaluation results stored in the checkpoint" when there were none.
    info = cli("info", "--checkpoint", finished_run / "last.pt")
    assert info.code == 0, info
    assert "stored in the checkpoint" not in info.text, info
    assert "evaluation results   none recorded" in info.text, info
