"""This CPU's sustained GEMM throughput on ViT-S's shapes (fp32 and bf16), and the share of it
that PatchGuard's evaluation and training passes achieve.

GEMMs: the four linears of a ViT-S/14 block (qkv 384->1152, proj 384->384, fc1 384->1536,
fc2 1536->384) at the token counts of a batch at the given image size. Their FLOP-weighted
throughput (total FLOPs / total time, median of ``--repeats``) is the machine's limit here.
Then PatchGuard (the fast preset's ViT-S/14, random init: the cost does not depend on the
weights) runs, timed the same way, with FLOPs counted by ``torch.utils.flop_counter``:

- an attack step: forward and input gradient, parameters frozen (every evaluation attack);
- a clean scoring pass (forward, no gradient);
- a training forward and backward with parameter gradients (the step without its PGD).

    OMP_NUM_THREADS=1 taskset -c 1 env PYTHONPATH=src python benchmarks/gemm_peak.py \\
        --image-size 112 --batch 16 --threads 1

Figures are shares of the peak measured in the same run; absolute GFLOP/s depend on the load.

``gemm_peak(..., device="cuda")`` times the same GEMMs on a GPU and ``count_flops`` counts a
step's FLOPs: ``gpu_check.py`` reports the GPU's peak and shares with them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

DIM, HIDDEN = 384, 1536
SHAPES = (("qkv", DIM, 3 * DIM), ("proj", DIM, DIM), ("fc1", DIM, HIDDEN), ("fc2", HIDDEN, DIM))


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up (oneDNN primitive creation, allocation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cuda_median_seconds(work: Callable[[], object], repeats: int, inner: int = 20) -> float:
    """Median GPU seconds of one ``work`` call, from CUDA events around ``inner`` calls.

    A large matmul is queued first so that the GPU is still busy while Python queues the timed
    calls: the events then measure the kernels back to back, not the launch overhead (a
    384x384 GEMM of a few thousand rows takes microseconds on a large GPU, about one launch).
    """
    side = 6144
    big = torch.randn(side, side, device="cuda")
    work()  # warm-up (cuBLAS handle, kernel choice, allocation)
    big @ big
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        big @ big  # keeps the GPU busy while the timed calls are queued
        start.record()
        for _ in range(inner):
            work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0 / inner)
    return statistics.median(times)


def gemm_peak(tokens: int, dtype: torch.dtype, repeats: int, route: str, device: str = "cpu"
              ) -> tuple[float, dict[str, float]]:
    """FLOP-weighted GFLOP/s of the four block GEMMs at ``tokens`` rows, and each one's, by
    ``route``: ``onednn`` (the op patchguard's fp32 linears use on CPUs) or ``torch``
    (F.linear; the only route on ``device`` cuda, where fp32 runs TF32 if the caller allows
    it: ``torch.backends.cuda.matmul.allow_tf32``)."""
    cuda = torch.device(device).type == "cuda"
    if cuda and route != "torch":
        raise ValueError(f"route {route!r} is CPU-only; on {device} use route 'torch'")
    total_flops = total_seconds = 0.0
    each = {}
    onednn = torch.ops.mkldnn._linear_pointwise
    for name, k, n in SHAPES:
        a = torch.randn(tokens, k).to(device=device, dtype=dtype)
        w = torch.randn(n, k).to(device=device, dtype=dtype)  # (out, in), as a linear stores it
        if route == "onednn":
            def work(a=a, w=w):
                return onednn(a, w, None, "none", [], "")
        else:
            def work(a=a, w=w):
                return F.linear(a, w)
        seconds = (_cuda_median_seconds(work, repeats) if cuda
                   else _median_seconds(work, repeats))
        flops = 2.0 * tokens * k * n
        each[name] = flops / seconds / 1e9
        total_flops += flops
        total_seconds += seconds
    return total_flops / total_seconds / 1e9, each


# Ops that do arithmetic worth counting; one of these missing from torch's FLOP registry
# (e.g. the CPU's fused attention) makes a count too low, and count_flops names it.
_HEAVY_OP = re.compile(r"mm\b|matmul|convolution|conv\dd|attention|einsum|(^|[._])linear")


def count_flops(work: Callable[[], object]) -> tuple[float, list[str]]:
    """FLOPs of ``work`` (every op torch's FLOP counter has a formula for: matmuls,
    convolutions, fused attention on CUDA and, here, on CPU) and the names of heavy-looking
    ops it has none for.

    A TorchDispatchMode over ``torch.utils.flop_counter.flop_registry``, not FlopCounterMode:
    the latter's module tracking refuses ``torch.autograd.grad``, which the attacks use.
    patchguard's linears run as F.linear meanwhile (the counter does not see the CPU's oneDNN
    op; the arithmetic is the same); a process whose ``patchguard`` is another package (the
    authors') has no such switch.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    # PyTorch's fused CPU attention has no formula of its own; its arguments begin like the
    # CUDA flash attention's (query, key, value; grad_out, query, key, value), whose formulas
    # (4 B H L S E forward, 2.5 times that backward) count the same matmuls.
    formulas = {**flop_registry,
                aten._scaled_dot_product_flash_attention_for_cpu:
                    flop_registry[aten._scaled_dot_product_flash_attention],
                aten._scaled_dot_product_flash_attention_for_cpu_backward:
                    flop_registry[aten._scaled_dot_product_flash_attention_backward]}
    total = [0]
    missed: set[str] = set()

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = formulas.get(func._overloadpacket)
            if count is not None:
                total[0] += count(*args, **kwargs, out_val=out)
            elif _HEAVY_OP.search(str(func._overloadpacket)):
                missed.add(str(func._overloadpacket))
            return out

    kernels = sys.modules.get("patchguard.models.kernels")
    enabled = getattr(kernels, "ENABLED", None)
    if enabled is not None:
        kernels.ENABLED = False
    try:
        with Counter():
            work()
    finally:
        if enabled is not None:
            kernels.ENABLED = enabled
    return float(total[0]), sorted(missed)


def _flops(work: Callable[[], object]) -> float:
    return count_flops(work)[0]


def main() -> None:
    """Print the GEMM peak per dtype and the achieved share of PatchGuard's passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m")
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.batch * ((args.image_size // 14) ** 2 + 1)
    peaks = {}
    for route in ("onednn", "torch"):
        for dtype in (torch.float32,) + (() if args.skip_bf16 else (torch.bfloat16,)):
            try:
                peak, each = gemm_peak(tokens, dtype, args.repeats, route)
            except RuntimeError as error:  # e.g. no bf16 inner product in this oneDNN build
                print(f"GEMM {route:>6} {str(dtype).split('.')[-1]:>8}: n/a ({error})"[:160])
                peaks[route, dtype] = 0.0
                continue
            peaks[route, dtype] = peak
            print(f"GEMM {route:>6} {str(dtype).split('.')[-1]:>8} at {tokens} tokens: "
                  f"{peak:7.1f} GFLOP/s ({', '.join(f'{k} {v:.1f}' for k, v in each.items())})",
                  flush=True)
    peak = max(peaks[route, torch.float32] for route in ("onednn", "torch"))
    best_bf16 = max(peaks.get((route, torch.bfloat16), 0.0) for route in ("onednn", "torch"))
    bf16_note = "not measured" if args.skip_bf16 else f"{best_bf16 / peak:.2f}x"
    print(f"fp32 peak {peak:.1f} GFLOP/s; best bf16 / fp32: {bf16_note} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()})")

    from patchguard.adversarial.ascent import input_gradients_only
    from patchguard.models.patchguard import PatchGuard

    model = PatchGuard(args.backbone, image_size=args.image_size, feature_layers=[6],
                       reg_layers=[2, 4, 6])
    x = torch.rand(args.batch, 3, args.image_size, args.image_size)

    def attack_step() -> None:
        with input_gradients_only(model):
            images = x.clone().requires_grad_(True)
            logits = model(images, with_attention=False).logits
            # backward() (FlopCounterMode's hooks needed it when this was written); with the
            # parameters frozen it computes the same input gradient only
            model.image_score(logits).sum().backward()

    def clean_pass() -> None:
        with torch.no_grad():
            model(x, with_attention=False)

    def train_pass() -> None:
        model.zero_grad(set_to_none=True)
        output = model(x, with_attention=True)
        output.logits.float().mean().backward()

    model.eval()
    cases = [("attack step (eval, input grad)", attack_step), ("clean pass", clean_pass)]
    for label, work in cases:
        flops = _flops(work)
        seconds = _median_seconds(work, args.repeats)
        achieved = flops / seconds / 1e9
        print(f"{label:<36} {flops / 1e9:8.2f} GFLOP  {achieved:7.1f} GFLOP/s  "
              f"{achieved / peak:6.1%} of the fp32 GEMM peak", flush=True)
    model.train()
    flops = _flops(train_pass)
    seconds = _median_seconds(train_pass, args.repeats)
    achieved = flops / seconds / 1e9
    print(f"{'training forward + backward':<36} {flops / 1e9:8.2f} GFLOP  {achieved:7.1f} "
          f"GFLOP/s  {achieved / peak:6.1%} of the fp32 GEMM peak", flush=True)


if __name__ == "__main__":
    main()
