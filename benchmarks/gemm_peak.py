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
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

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


def gemm_peak(tokens: int, dtype: torch.dtype, repeats: int, route: str
              ) -> tuple[float, dict[str, float]]:
    """FLOP-weighted GFLOP/s of the four block GEMMs at ``tokens`` rows, and each one's, by
    ``route``: ``onednn`` (the op patchguard's fp32 linears use) or ``torch`` (F.linear)."""
    total_flops = total_seconds = 0.0
    each = {}
    onednn = torch.ops.mkldnn._linear_pointwise
    for name, k, n in SHAPES:
        a = torch.randn(tokens, k).to(dtype)
        w = torch.randn(n, k).to(dtype)  # (out, in), as a linear layer stores it
        if route == "onednn":
            def work(a=a, w=w):
                return onednn(a, w, None, "none", [], "")
        else:
            def work(a=a, w=w):
                return F.linear(a, w)
        seconds = _median_seconds(work, repeats)
        flops = 2.0 * tokens * k * n
        each[name] = flops / seconds / 1e9
        total_flops += flops
        total_seconds += seconds
    return total_flops / total_seconds / 1e9, each


def _flops(work: Callable[[], object]) -> float:
    """FLOPs of ``work`` by torch's counter, with the linears on F.linear (the counter does
    not see the oneDNN op; the arithmetic is the same)."""
    from patchguard.models import kernels

    enabled = kernels.ENABLED
    kernels.ENABLED = False
    try:
        with FlopCounterMode(display=False) as counter:
            work()
    finally:
        kernels.ENABLED = enabled
    return float(counter.get_total_flops())


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
    print(f"fp32 peak {peak:.1f} GFLOP/s; best bf16 / fp32: {best_bf16 / peak:.2f}x "
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
            # backward() rather than autograd.grad: the FLOP counter's hooks need it; with
            # the parameters frozen it computes the same input gradient only
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
