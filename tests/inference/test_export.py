"""ONNX export: the graph equals PyTorch, has a dynamic batch axis, and the CLI verb works."""

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

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export_data")
    make_mvtec_class(root, n_train=4)
    return train(tiny_config(root, tmp_path_factory.mktemp("export_run"), epochs=1),
                 progress=False)


def test_onnx_matches_pytorch(checkpoint, tmp_path, capsys):
    from patchguard.inference.export import export_onnx

    report = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert report.verified_with == "onnxruntime" and report.max_abs_diff < 1e-4
    assert "max abs diff" in capsys.readouterr().out
    # The MHA fast-path switch is restored after export.
    assert torch.backends.mha.get_fastpath_enabled()

    model, _ = load_model(checkpoint)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch axis
        images = torch.rand(batch, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator()
                            .manual_seed(batch))
        scores, maps = model.predict(images)
        got_scores, got_maps = session.run(["scores", "maps"], {"images": images.numpy()})
        assert got_scores.shape == (batch,) and got_maps.shape == (batch, TINY_SIZE, TINY_SIZE)
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_maps, maps.numpy(), atol=1e-4)
    # No attention output and no training-only ops in the graph.
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["scores", "maps"]
    assert not {node.op_type for node in graph.node} & {"Dropout"}


def test_cli_export(checkpoint, tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    out = tmp_path / "cli.onnx"
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint), "--format", "onnx",
                              "--output", str(out)])
    assert COMMANDS[args.verb](args) == 0 and out.is_file()
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["scores", "maps"]
    # The output is never the checkpoint itself, and an ONNX file is only replaced by ONNX.
    again = parser.parse_args(["export", "--checkpoint", str(checkpoint), "--output",
                               str(checkpoint), "--no-verify"])
    with pytest.raises(ValueError, match="is the checkpoint this command reads"):
        COMMANDS[again.verb](again)
