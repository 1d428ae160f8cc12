"""fp32 linear layers through oneDNN on CPUs, forward and backward.

PyTorch's CPU ``F.linear`` / ``mm`` call MKL's sgemm, which on AMD CPUs runs its AVX2 kernels
(MKL picks kernels by CPU vendor, not by instruction set): on a Zen 5 core that is about
85 GFLOP/s against about 183 GFLOP/s for oneDNN's AVX-512 kernels on ViT-S's shapes. oneDNN
ships inside PyTorch (``torch.ops.mkldnn._linear_pointwise``, the op inductor uses), so routing
fp32 CPU linears through it needs only an autograd function. Results differ from MKL's by float
rounding (about 1e-7 relative).

On a CPU without AVX-512 the route is off by default: there oneDNN has only AVX2 kernels too,
and it measured slower than MKL's sgemm (our training step at 112 px with PGD-3: 5.31 against
4.25 CPU s on an AVX2-only AMD EPYC core, benchmarks/bench_authors.py, docs/benchmarks.md).

Everywhere else (CUDA, autocast, tracing, ONNX export, torch.compile, other dtypes) the layers
are plain ``F.linear``. ``PATCHGUARD_ONEDNN_LINEAR=0`` in the environment turns the route off,
``=1`` on whatever the CPU.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_OP = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
       if torch.backends.mkldnn.is_available() else None)
AVAILABLE = _OP is not None  # this PyTorch build has oneDNN's linear


def onednn_by_default(capability: str, setting: str | None) -> bool:
    """Whether the oneDNN route is on: ``setting`` (the environment variable: "0" off, "1"
    on), else only where the CPU has AVX-512 (``capability``, torch's CPU capability)."""
    if setting in ("0", "1"):
        return setting == "1"
    return "AVX512" in capability.upper()


ENABLED = AVAILABLE and onednn_by_default(torch.backends.cpu.get_cpu_capability(),
                                          os.environ.get("PATCHGUARD_ONEDNN_LINEAR"))


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)`` by oneDNN; ``a`` may have leading batch dimensions."""
    return _OP(a, b_t, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        need_x, need_w, need_b = ctx.needs_input_grad
        # Save only what the wanted gradients use: an attack with frozen parameters keeps no
        # activations for weight gradients and runs no weight-gradient GEMMs (an autograd
        # function cannot see that autograd.grad asks for the input gradient only).
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.bias_grad = bias is not None and need_b
        return _mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(grad, weight.t())
        if ctx.needs_input_grad[1] or ctx.bias_grad:
            flat = grad.reshape(-1, grad.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_w = _mm(flat.t(), x.reshape(-1, x.shape[-1]).t())
            if ctx.bias_grad:
                grad_b = flat.sum(dim=0)
        return grad_x, grad_w, grad_b


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the oneDNN route applies: fp32 CPU tensors, eager, no autocast."""
    return (
        ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _exporting()
        and not torch.onnx.is_in_onnx_export()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for fp32 CPU tensors outside autocast, tracing and compile."""
    if use_onednn(x, weight):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class CpuLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU forward and backward run on oneDNN; F.linear elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as nn.Linear (up to float rounding)."""
        return linear(x, self.weight, self.bias)


def use_cpu_linear(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` inside ``module`` a :class:`CpuLinear`; return how many.

    Only the class changes: parameters, state-dict keys and hooks stay as they are.
    """
    count = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = CpuLinear
            count += 1
    return count
