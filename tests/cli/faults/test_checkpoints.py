"""Checkpoints every verb reads: damaged, foreign, unsafe files.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from .common import (
    CLASS,
    assert_refused,
)


@pytest.mark.parametrize("kind", ["zero", "text", "png", "truncated", "missing", "original"])
def test_broken_checkpoint_files(cli, tmp_path, finished_run, original, kind):
    # X-ckpt-*; passed before the fixes
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
    # X-ckpt-evil (security); passed before the fixes too
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker), "config": {}}, path)
    for verb in ("test", "info", "train"):
        flag = "--resume" if verb == "train" else "--checkpoint"
        assert_refused(cli(verb, flag, path), "evil.pt")
    assert not marker.exists()


def test_checkpoint_that_is_a_folder_is_named_as_such(cli, run_copy):
    # X-ckpt-dir. Before the fixes: "checkpoint <folder> does not exist".
    result = cli("test", "--checkpoint", run_copy, "--quiet")
    assert_refused(result, "is a folder", "last.pt")


def test_an_unexpected_error_is_a_message_with_exit_code_1(cli, run_copy, monkeypatch):
    from patchguard.inference import card

    def broken(*args, **kwargs):
        raise TypeError("something nobody expected")

    monkeypatch.setattr(card, "model_card", broken)
    result = cli("info", "--checkpoint", run_copy / "last.pt")
    assert_refused(result, "TypeError: something nobody expected", "--debug", code=1)


# ============================================================================ damaged
# A patchguard checkpoint whose contents are broken is a damaged file (exit code 2, the file and
# what is wrong with it named), never "AttributeError ... this looks like a bug" (exit code 1).


def _damage_checkpoint(source: Path, target: Path, kind: str) -> Path:
    state = torch.load(source, map_location="cpu", weights_only=True)
    weights = state["model"]
    name = sorted(k for k in weights if k.startswith("discriminator"))[0]
    if kind == "config-str":
        state["config"] = "not a config"
    elif kind == "weight-missing":
        del weights[name]
    elif kind == "weight-shape":
        weights[name] = torch.zeros(3, 5)
    elif kind == "weight-nan":
        weights[name] = torch.full_like(weights[name], float("nan"))
    torch.save(state, target)
    return target


DAMAGE = {"config-str": "config is a str", "weight-missing": "missing",
          "weight-shape": "has shape [3, 5]", "weight-nan": "nan"}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_checkpoint_is_named_by_every_verb(cli, tmp_path, finished_run, data, kind):
    # Formerly: AttributeError / RuntimeError "this looks like a bug", exit code 1; NaN weights
    # predicted NaN scores with exit code 0.
    path = _damage_checkpoint(finished_run / "last.pt", tmp_path / "damaged.pt", kind)
    image = data / CLASS / "test" / "good" / "000.png"
    argvs = {
        "info": [],
        "test": ["--no-record", "--json", tmp_path / "r.json", "--steps-test", "1"],
        "predict": ["--input", image, "--output-dir", tmp_path / "pred"],
        "export": ["--output", tmp_path / "m.onnx", "--no-verify"],
        "calibrate": ["--normal-dir", image],
    }
    for verb, extra in argvs.items():
        result = cli(verb, "--checkpoint", path, *extra)
        assert_refused(result, "damaged.pt", "damaged", DAMAGE[kind])
        assert "looks like a bug" not in result.text, result
    assert not (tmp_path / "m.onnx").exists()  # no broken export left behind
    assert not (tmp_path / "pred").exists()


def test_damaged_checkpoint_through_the_api(tmp_path, finished_run):
    # Formerly: load_model(...).predict returned NaN scores for NaN weights.
    import patchguard
    from patchguard.utils.checkpoint import CheckpointError

    for kind in DAMAGE:
        path = _damage_checkpoint(finished_run / "last.pt", tmp_path / f"{kind}.pt", kind)
        with pytest.raises(CheckpointError, match=f"{kind}.pt is damaged"):
            patchguard.load_model(path)
        with pytest.raises(CheckpointError, match="damaged"):
            patchguard.load(path)


def test_a_pickled_object_never_gets_weights_only_false_advice(cli, tmp_path):
    # Formerly: torch's message ("... set weights_only=False ...") was passed on to the user.
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(tmp_path / "PWNED"), "config": {}}, path)
    result = cli("info", "--checkpoint", path)
    assert_refused(result, "evil.pt")
    assert "weights_only" not in result.text, result
