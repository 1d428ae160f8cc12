"""Output folders of every verb: files in the way, folders inside the data set.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import pytest

from .common import (
    CLASS,
    assert_refused,
)


@pytest.mark.parametrize("verb", ["predict", "visualize", "benchmark"])
def test_output_dir_that_is_a_file_is_refused_before_work(cli, finished_run, data, tmp_path,
                                                           verb):
    # P-out-file / V-out-file / B-out-file. Before: [Errno 17/20] after (or during) the work.
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    argv = {
        "predict": ["predict", "--checkpoint", finished_run / "last.pt", "--input",
                    data / CLASS / "test", "--output-dir", blocker],
        "visualize": ["visualize", "--checkpoint", finished_run / "last.pt", "--output-dir",
                      blocker, "--steps", "1"],
        "benchmark": ["benchmark", "--checkpoint-dir", finished_run.parent, "--classes", "run",
                      "--dataset-dir", data, "--output-dir", blocker, "--steps-test", "1"],
    }[verb]
    result = cli(*argv, "--device", "cpu", "--quiet")
    assert_refused(result, "--output-dir", "is a file")
    assert blocker.read_text() == "mine"
