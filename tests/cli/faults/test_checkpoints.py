"""Checkpoints every verb reads: damaged, foreign, unsafe files.

Split from the former tests/cli/test_faults.py (issue #13, #24); helpers and fixtures in
helpers.py and conftest.py beside this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from .helpers import (
    assert_refused,
)


@pytest.mark.parametrize("kind", ["zero", "text", "png", "truncated", "missing", "original"])
def test_broken_checkpoint_files(cli, tmp_path, finished_run, original, kind):
    # X-ckpt-*; pass on a0df06f
    path = tmp_path / f"{kind}.pt"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "png":
        Image.new("RGB", (8, 8)).save(path, "PNG")
    elif kind == "truncated":
        path.write_bytes((finished_run / "last.pt").read_bytes()[:100_000])
    elif kind == "original":
        path = original
    for verb in ("test", "predict", "calibrate", "info", "export"):
        argv = {"predict": ["--input", tmp_path], "calibrate": [], "info": [], "export": [],
                "test": ["--no-record"]}[verb]
        assert_refused(cli(verb, "--checkpoint", path, *argv), path.name)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_not_run(cli, tmp_path):
    # X-ckpt-evil (security); passes on a0df06f
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker), "config": {}}, path)
    for verb in ("test", "info", "train"):
        flag = "--resume" if verb == "train" else "--checkpoint"
        assert_refused(cli(verb, flag, path), "evil.pt")
    assert not marker.exists()


def test_checkpoint_that_is_a_folder_is_named_as_such(cli, run_copy):
    # X-ckpt-dir. a0df06f: "checkpoint <folder> does not exist".
    result = cli("test", "--checkpoint", run_copy, "--quiet")
    assert_refused(result, "is a folder", "last.pt")


def test_an_unexpected_error_is_a_message_with_exit_code_1(cli, run_copy, monkeypatch):
    from patchguard.inference import card

    def broken(*args, **kwargs):
        raise TypeError("something nobody expected")

    monkeypatch.setattr(card, "model_card", broken)
    result = cli("info", "--checkpoint", run_copy / "last.pt")
    assert_refused(result, "TypeError: something nobody expected", "--debug", code=1)
