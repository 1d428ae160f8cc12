"""OpenVINO export: the IR equals PyTorch (run with OpenVINO's own runtime at fp32), keeps the
names and the dynamic batch axis and fp32 weights, and the CLI verb works."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from patchguard.cli.tools import COMMANDS, register
from patchguard.models.factory import load_model
from patchguard.training.trainer import train

from helpers.data import make_mvtec_class
from helpers.models import TINY_SIZE, tiny_config

ov = pytest.importorskip("openvino")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openvino_data")
    make_mvtec_class(root, n_train=4)
    return train(tiny_config(root, tmp_path_factory.mktemp("openvino_run"), epochs=1),
                 progress=False)


@pytest.mark.slow
def test_openvino_matches_pytorch(checkpoint, tmp_path, capsys):
    from patchguard.inference.export import export_openvino

    xml = tmp_path / "model.xml"
    report = export_openvino(checkpoint, xml)
    assert report.verified_with == "openvino" and report.max_abs_diff < 1e-4
    assert "max abs diff" in capsys.readouterr().out
    assert xml.with_suffix(".bin").is_file()
    assert torch.backends.mha.get_fastpath_enabled()

    core = ov.Core()
    ir = core.read_model(str(xml))
    assert [i.get_any_name() for i in ir.inputs] == ["images"]
    assert [o.get_any_name() for o in ir.outputs] == ["scores", "maps"]
    assert ir.inputs[0].get_partial_shape()[0].is_dynamic
    # Weights kept in fp32 (save_model would compress them to fp16 by default).
    constants = {op.get_output_element_type(0).get_type_name() for op in ir.get_ops()
                 if op.get_type_name() == "Constant"}
    assert "f16" not in constants and "f32" in constants
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    model, _ = load_model(checkpoint)
    for batch in (1, 3):  # dynamic batch axis
        images = torch.rand(batch, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator()
                            .manual_seed(batch))
        scores, maps = model.predict(images)
        result = compiled([images.numpy()])
        got_scores, got_maps = result[compiled.output("scores")], result[compiled.output("maps")]
        assert got_scores.shape == (batch,) and got_maps.shape == (batch, TINY_SIZE, TINY_SIZE)
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_maps, maps.numpy(), atol=1e-4)


@pytest.mark.slow
def test_cli_export_openvino(checkpoint, tmp_path, capsys):
    import shutil

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    local = tmp_path / "last.pt"
    shutil.copy(checkpoint, local)
    args = parser.parse_args(["export", "--checkpoint", str(local), "--format", "openvino"])
    assert COMMANDS[args.verb](args) == 0
    assert (tmp_path / "last.xml").is_file() and (tmp_path / "last.bin").is_file()
    assert "OpenVINO (CPU, fp32) vs PyTorch" in capsys.readouterr().out
    # An earlier IR is replaced; an IR must be .xml; the checkpoint is never the output.
    again = parser.parse_args(["export", "--checkpoint", str(local), "--format", "openvino",
                               "--no-verify"])
    assert COMMANDS[again.verb](again) == 0
    for output, message in ((tmp_path / "m.onnx", "is not an .xml file"),
                            (local, "is not an .xml file")):
        bad = parser.parse_args(["export", "--checkpoint", str(local), "--format", "openvino",
                                 "--output", str(output), "--no-verify"])
        with pytest.raises(ValueError, match=message):
            COMMANDS[bad.verb](bad)
    # A .bin without an IR beside it may be PyTorch weights; an .xml that is no IR is not ours.
    (tmp_path / "weights.bin").write_text("mine")
    (tmp_path / "page.xml").write_text("<?xml version='1.0'?><page/>")
    for name in ("weights.xml", "page.xml"):
        clash = parser.parse_args(["export", "--checkpoint", str(local), "--format",
                                   "openvino", "--output", str(tmp_path / name), "--no-verify"])
        with pytest.raises(ValueError, match="already exists"):
            COMMANDS[clash.verb](clash)
    assert (tmp_path / "weights.bin").read_text() == "mine"
