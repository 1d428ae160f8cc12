"""ONNX and OpenVINO export: one graph from an image batch in [0, 1] to image scores and
smoothed anomaly maps.

``onnx`` (and, for the numerical check, ``onnxruntime``) and ``openvino`` are optional
dependencies, imported only here, only when exporting. The OpenVINO IR is converted from the
ONNX graph (OpenVINO's ONNX front end keeps the input and output names and the dynamic batch),
with fp32 weights.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.factory import load_model
from ..models.patchguard import PatchGuard
from ..models.postprocess import PostProcessor

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
#: The ONNX metadata key holding the model's post-processing (thresholds, decision, colours) as
#: JSON, so that a deployment decides exactly as ``patchguard predict`` does.
POSTPROCESS_KEY = "patchguard.postprocess"


class ExportWrapper(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> (scores (B,), maps (B, S, S)), without attention capture."""

    def __init__(self, model: PatchGuard) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores and upsampled, Gaussian-smoothed anomaly maps."""
        # with_attention=False: the qkv hooks record nothing, so no attention enters the graph.
        logits = self.model(images, with_attention=False).logits
        return self.model.image_score(logits), self.model.anomaly_map(logits)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it was verified."""

    path: Path
    verified_with: str  # "onnxruntime", "onnx.checker", "openvino" or "none"
    max_abs_diff: float | None  # largest |export - PyTorch| over scores and maps


def opset_range() -> tuple[int, int]:
    """The opsets the installed TorchScript ONNX exporter supports (its own constants)."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - very old or very new torch
        return 9, 17
    low = max(int(getattr(_constants, "ONNX_BASE_OPSET", 9)), 9)
    high = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET",
                       getattr(_constants, "ONNX_MAX_OPSET", 17)))
    return low, high


def check_opset(opset: int) -> int:
    """--opset within :func:`opset_range` (InputError naming it), before anything is loaded."""
    from ..utils.checks import integer

    low, high = opset_range()
    return integer("--opset", opset, low, high, fix="the default 17 works")


def _require_onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install onnx onnxruntime "
            "(or pip install 'patchguard[demo,test]')"
        ) from error
    return onnx


def export_model(
    model: PatchGuard,
    output: str | Path,
    opset: int = 17,
    verify: bool = True,
    tolerance: float = 1e-3,
    verify_batch: int = 2,
    post: PostProcessor | None = None,
) -> ExportReport:
    """Export an in-memory model (see :func:`export_onnx`), with ``post`` in its metadata."""
    from ..utils.files import staged_output

    output = Path(output)
    # Exported and verified under a temporary name: a failed export or check leaves no broken
    # file behind, and the previous file (an earlier export) survives it.
    with staged_output(output) as staged:
        report = _export_model(model, staged, opset, verify, tolerance, verify_batch, post)
    report.path = output
    if report.verified_with == "onnxruntime":
        print(f"exported {output}; onnxruntime vs PyTorch on {verify_batch} random images: "
              f"max abs diff {report.max_abs_diff:.3g}")
    elif verify:
        print(f"exported {output}; verified with onnx.checker (onnxruntime not installed)")
    return report


def _export_model(model: PatchGuard, output: Path, opset: int, verify: bool, tolerance: float,
                  verify_batch: int, post: PostProcessor | None) -> ExportReport:
    onnx = _require_onnx()
    model = model.float().cpu().eval()
    wrapper = ExportWrapper(model).eval()
    size = model.image_size
    example = torch.rand(1, 3, size, size)
    # The TorchScript exporter (dynamo=False) needs no onnxscript and handles the hooks and the
    # reflect padding's slicing; dynamic_axes makes the batch size free.
    # nn.MultiheadAttention's inference fast path is a fused op ONNX cannot express; switch it
    # off for the trace (the math is the same), and restore the global setting afterwards.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-level shape check; the shapes are fixed here
            # except the batch axis, which those checks do not involve.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The TorchScript exporter is deprecated in favour of one that needs onnxscript;
            # it is still shipped and exact here, so its deprecation notice is only noise.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX",
                                    category=DeprecationWarning)
            torch.onnx.export(
                wrapper, (example,), str(output), input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), opset_version=opset, do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"}
                                                           for name in OUTPUT_NAMES}},
                dynamo=False,
            )
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
        # The exporter's message can hold a dump of the whole graph: keep its first line.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        output.unlink(missing_ok=True)
        raise ValueError(f"ONNX export at --opset {opset} failed ({first}); the default 17 "
                         "works") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if post is not None:
        import json

        proto = onnx.load(str(output))
        onnx.helper.set_model_props(proto, {POSTPROCESS_KEY: json.dumps(post.to_dict())})
        onnx.save(proto, str(output))
    onnx.checker.check_model(str(output))
    if not verify:
        return ExportReport(output, "onnx.checker", None)
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed: the graph was checked with onnx.checker "
                       "only (pip install onnxruntime to compare it with PyTorch)")
        return ExportReport(output, "onnx.checker", None)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    diff = _compare(wrapper, lambda images: session.run(list(OUTPUT_NAMES),
                                                        {INPUT_NAME: images}), verify_batch)
    _check_tolerance(diff, tolerance)
    return ExportReport(output, "onnxruntime", diff)


def _compare(wrapper: ExportWrapper, run, batch: int) -> float:
    """Largest |run(images) - PyTorch| over scores and maps, on seeded random images."""
    size = wrapper.model.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = wrapper(images)
    got = run(images.numpy())
    return max(float(np.abs(np.asarray(g) - e.numpy()).max()) for g, e in zip(got, expected))


def _check_tolerance(diff: float, tolerance: float) -> None:
    if not diff <= tolerance:
        raise ValueError(f"the exported graph differs from PyTorch by {diff:.3g} (> {tolerance})")


def _require_openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            "OpenVINO export needs the 'openvino' and 'onnx' packages: pip install "
            "'patchguard[openvino]'"
        ) from error
    return openvino


def openvino_weights(output: str | Path) -> Path:
    """The weights file OpenVINO writes beside an IR's ``.xml``."""
    return Path(output).with_suffix(".bin")


def compile_openvino(path: str | Path, device: str = "CPU", fp32: bool = True):
    """Compile an exported IR; ``fp32`` asks for fp32 arithmetic (on CPUs with bf16 support the
    plugin's default is bf16: faster, about 1e-2 on the maps)."""
    ov = _require_openvino()
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"} if fp32 else {}
    return core.compile_model(core.read_model(str(path)), device, config)


def export_model_openvino(
    model: PatchGuard,
    output: str | Path,
    opset: int = 17,
    verify: bool = True,
    tolerance: float = 1e-3,
    verify_batch: int = 2,
) -> ExportReport:
    """Export an in-memory model to OpenVINO IR (see :func:`export_openvino`)."""
    import tempfile

    ov = _require_openvino()
    _require_onnx()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            export_model(model, onnx_path, opset=opset, verify=False)
            converted = ov.convert_model(str(onnx_path))
            # compress_to_fp16 defaults to True: the weights would no longer be the model's.
            ov.save_model(converted, str(output), compress_to_fp16=False)
    except BaseException:
        output.unlink(missing_ok=True)
        openvino_weights(output).unlink(missing_ok=True)
        raise
    from ..utils.files import record_outputs

    record_outputs([output, openvino_weights(output)])
    if not verify:
        print(f"exported {output} and {openvino_weights(output).name} (not verified)")
        return ExportReport(output, "none", None)
    compiled = compile_openvino(output)
    wrapper = ExportWrapper(model).eval()
    diff = _compare(wrapper, lambda images: [compiled([images])[i] for i in range(2)],
                    verify_batch)
    print(f"exported {output} and {openvino_weights(output).name}; OpenVINO (CPU, fp32) vs "
          f"PyTorch on {verify_batch} random images: max abs diff {diff:.3g}")
    _check_tolerance(diff, tolerance)
    return ExportReport(output, "openvino", diff)


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    opset: int = 17,
    verify: bool = True,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export a checkpoint to ONNX: ``images`` (B, 3, S, S) in [0, 1] -> ``scores``, ``maps``;
    its thresholds and colour scale go into the metadata (:data:`POSTPROCESS_KEY`, JSON).

    The batch axis is dynamic. After export the graph is run with onnxruntime on random images
    and compared with PyTorch (the max abs difference is printed; above ``tolerance`` raises);
    without onnxruntime only ``onnx.checker`` validates it.
    """
    check_opset(opset)
    model, state = load_model(checkpoint, "cpu")
    return export_model(model, output, opset=opset, verify=verify, tolerance=tolerance,
                        post=PostProcessor.from_checkpoint(state))


def export_openvino(
    checkpoint: str | Path,
    output: str | Path,
    opset: int = 17,
    verify: bool = True,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export a checkpoint to OpenVINO IR (``output`` .xml plus its .bin): ``images``
    (B, 3, S, S) in [0, 1] -> ``scores``, ``maps``, dynamic batch, fp32 weights.

    After export the IR is compiled for the CPU with fp32 arithmetic, run on random images and
    compared with PyTorch (above ``tolerance`` raises). Compile it the same way
    (:func:`compile_openvino`) to get these numbers; OpenVINO's CPU default may be bf16.
    """
    check_opset(opset)
    _require_openvino()
    model, _ = load_model(checkpoint, "cpu")
    return export_model_openvino(model, output, opset=opset, verify=verify, tolerance=tolerance)
