"""``import-checkpoint`` and ``export``: the files they read and write.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from .common import (
    assert_names_key,
    assert_refused,
    digest,
    temp_leftovers,
)
from helpers.models import TINY_BACKBONE, TINY_SIZE

# ============================================================================ import / export


def import_argv(original: Path, output: Path, *extra: object) -> list[object]:
    return ["import-checkpoint", "--original", original, "--output", output, "--backbone",
            TINY_BACKBONE, "--image-size", str(TINY_SIZE), *extra]


def test_import_refuses_to_overwrite_a_trained_checkpoint(cli, original, run_copy):
    # I-out-trained. Before the fixes: the trained last.pt is silently replaced.
    before = digest(run_copy / "last.pt")
    result = cli(*import_argv(original, run_copy / "last.pt"))
    assert_refused(result, "last.pt")
    assert digest(run_copy / "last.pt") == before


def test_import_refuses_to_overwrite_its_input(cli, original, tmp_path):
    # I-out-is-input. Before the fixes: the original's file is replaced by the conversion.
    path = Path(shutil.copy(original, tmp_path / "orig.pth"))
    before = digest(path)
    result = cli(*import_argv(path, path))
    assert_refused(result, "orig.pth")
    assert digest(path) == before


@pytest.mark.parametrize("flags,needle", [
    (["--dsc-heads", "0"], "0"),  # before the fixes: "error: integer modulo by zero"
    (["--dsc-heads", "-4"], "-4"),  # before the fixes: torch's words, flag not named
    (["--dsc-heads", "3"], "3"),  # passed before the fixes too
    (["--feature-layers", "99"], "99"),  # before the fixes: "layer 99 out of range", no flag
], ids=["I-heads-0", "I-heads-neg", "I-heads-3", "I-feat-99"])
def test_import_bad_flag(cli, original, tmp_path, flags, needle):
    key = flags[0][2:]
    result = cli(*import_argv(original, tmp_path / "x.pt", *flags))
    assert_refused(result, needle)
    assert_names_key(result, key)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("kind", ["missing", "zero", "ours"])
def test_import_bad_original(cli, tmp_path, finished_run, kind):
    # I-orig-*; passed before the fixes
    path = {"missing": tmp_path / "nope.pth", "zero": tmp_path / "zero.pth",
            "ours": finished_run / "last.pt"}[kind]
    if kind == "zero":
        path.write_bytes(b"")
    assert_refused(cli(*import_argv(path, tmp_path / "x.pt")))


def test_export_refuses_to_overwrite_its_input(cli, run_copy):
    # E-out-is-ckpt. Before the fixes: the checkpoint is replaced by the ONNX file.
    pytest.importorskip("onnx")
    before = digest(run_copy / "last.pt")
    result = cli("export", "--checkpoint", run_copy / "last.pt", "--output",
                 run_copy / "last.pt", "--no-verify")
    assert_refused(result, "last.pt")
    assert digest(run_copy / "last.pt") == before


@pytest.mark.parametrize("opset", ["0", "99"])
def test_export_bad_opset(cli, finished_run, tmp_path, opset):
    # E-opset-0 / E-opset-99. Before the fixes: RuntimeError traceback (and a dump of the graph).
    pytest.importorskip("onnx")
    result = cli("export", "--checkpoint", finished_run / "last.pt", "--output",
                 tmp_path / "m.onnx", "--opset", opset, "--no-verify")
    assert_refused(result, opset)
    assert_names_key(result, "opset")


def test_import_output_folder_and_export_over_another_checkpoint(cli, original, run_copy):
    # I-out-dir / E-out-epoch. Before: a temp file's name in the message / silently replaced.
    assert_refused(cli(*import_argv(original, run_copy)), "--output", "is a folder")
    before = digest(run_copy)
    result = cli("export", "--checkpoint", run_copy / "last.pt", "--output",
                 run_copy / "epoch_0003.pt", "--no-verify")
    assert_refused(result, "epoch_0003.pt", "--overwrite")
    assert digest(run_copy) == before


def test_import_overwrite_flag_replaces_on_purpose(cli, original, tmp_path):
    out = tmp_path / "x.pt"
    out.write_bytes(b"old")
    assert_refused(cli(*import_argv(original, out)), "x.pt", "--overwrite")
    assert out.read_bytes() == b"old"
    assert cli(*import_argv(original, out, "--overwrite")).code == 0
    assert out.read_bytes() != b"old"


# ============================================================================ past failures


def test_import_of_a_patchguard_checkpoint_says_so(cli, finished_run, tmp_path):
    # Formerly: importing one of our own checkpoints reported a "discriminator layout" error.
    result = cli(*import_argv(finished_run / "last.pt", tmp_path / "x.pt"))
    assert_refused(result, "last.pt", "already a patchguard checkpoint", "patchguard info")
    assert not (tmp_path / "x.pt").exists()


def test_export_replaces_only_its_own_exports(cli, finished_run, tmp_path):
    # Formerly (loss): export replaced any .onnx (it checked only the suffix).
    pytest.importorskip("onnx")
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"someone's model")
    argv = ["export", "--checkpoint", finished_run / "last.pt", "--no-verify", "--output"]
    assert_refused(cli(*argv, mine), "--output", "model.onnx", "--overwrite")
    assert mine.read_bytes() == b"someone's model"
    assert cli(*argv, mine, "--overwrite").code == 0  # on purpose
    ours = tmp_path / "again.onnx"
    assert cli(*argv, ours).code == 0
    assert cli(*argv, ours).code == 0  # its own export: replaced
    assert temp_leftovers(tmp_path) == []


def test_export_of_nan_weights_is_a_damaged_file_and_leaves_nothing(cli, finished_run, tmp_path):
    # Formerly: "differs by nan" and a broken .onnx left behind.
    pytest.importorskip("onnx")
    state = torch.load(finished_run / "last.pt", map_location="cpu", weights_only=True)
    name = next(k for k in state["model"] if k.startswith("discriminator"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    result = cli("export", "--checkpoint", path, "--output", tmp_path / "nan.onnx")
    assert_refused(result, "nan.pt", "damaged", "NaN")
    assert not (tmp_path / "nan.onnx").exists() and temp_leftovers(tmp_path) == []
