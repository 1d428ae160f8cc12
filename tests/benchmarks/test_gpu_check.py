"""The GPU check's report (benchmarks/gpu_check.py) from a synthetic result: every section
renders, and its TFLOP/s and shares of the GEMM peak are the arithmetic they claim; the FLOP
counter both use (gemm_peak.count_flops) against 2mnk per matmul."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gemm_peak  # noqa: E402
import gpu_check  # noqa: E402

EACH = {"qkv": 150.0, "proj": 100.0, "fc1": 210.0, "fc2": 5.25}
REPORT = {
    "date": "2026-12-07 04:00 UTC",
    "machine": {"gpu": "Test GPU", "gpu_memory_gb": 80.0, "driver": "1.0", "cpus": 16,
                "torch": "2.x", "timm": "1.x", "python": "3.11"},
    "skipped": ["training speed bf16+compile (no time left)"], "notes": [],
    "data": {"class": "washer", "n_train": 60}, "weights": None,
    "train": {
        "fp32": {"s_per_step": 0.5, "images_per_s": 32.0, "warmup_s": 3.0,
                 "peak_memory_gb": 10.0, "peak": "tf32", "tokens": 8224,
                 "loader_wait_share": 0.02, "checkpoint_write_s": 0.3},
        "bf16": {"s_per_step": 0.4, "images_per_s": 40.0, "warmup_s": 2.0,
                 "peak_memory_gb": 6.0, "peak": "bf16", "tokens": 8224}},
    # 20 TFLOP per step: fp32 at 0.5 s/step is 40 TFLOP/s, bf16 at 0.4 s/step 50 TFLOP/s.
    "train_flops": {"flops": 20e12, "uncounted_ops": [], "variant": "fp32"},
    "peaks": {"tokens": 8224, "fp32": {"tflops": 50.0, "each": EACH},
              "tf32": {"tflops": 200.0, "each": EACH}, "bf16": {"tflops": 400.0, "each": EACH}},
    "eval": {"seconds": 2.0, "n_images": 38, "images_per_s": 19.0, "passes": 2, "peak": "fp32",
             "flops": 10e12, "uncounted_ops": ["aten.some_attention"]},
    "robustify": {"images_per_s": 500.0, "epochs": 20, "images_per_epoch": 60,
                  "optimizer_steps": 160, "wall_s": 2.4, "epsilon": 4.0, "steps": 3,
                  "batch_size": 8, "feature_layers": [6], "image_size": 224,
                  "backbone": "vit_small_patch14_dinov2.lvd142m", "tf32": False, "peak": "fp32",
                  "peak_memory_gb": 3.0, "flops_per_image": 40e9, "uncounted_ops": []},
    "recipe": {"epochs_planned": 100, "epochs_done": 100, "exit": 0, "wall_s": 120.0,
               "variant": "fp32", "weights": "random initialisation", "final_loss": 0.1,
               "train_images_per_s": 50.0, "rows": [
                   {"attack": "clean", "epsilon": 0.0, "image_auroc": 0.9, "pixel_auroc": 0.95,
                    "images_per_s": 300.0},
                   {"attack": "pgd", "epsilon": 2.0, "image_auroc": 0.5, "pixel_auroc": 0.6,
                    "images_per_s": 60.0},
                   {"attack": "standard", "epsilon": 2.0, "image_auroc": 0.2,
                    "pixel_auroc": None, "images_per_s": 1.5},
                   {"attack": "standard", "epsilon": 8.0, "image_auroc": 0.0,
                    "pixel_auroc": 0.3, "images_per_s": 1.25}]},
}
ARGS = argparse.Namespace(budget=460.0, batch_size=16, smoke=False, recipe_minutes=2.0)


def _table_rows(text: str, header_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_report_renders_every_section_with_its_shares() -> None:
    text = gpu_check.render(copy.deepcopy(REPORT), ARGS)
    train = _table_rows(text, "| variant | s/step")
    # Every row has the header's number of cells (a valid Markdown table).
    assert {row.count("|") for row in train} == {train[0].count("|")}
    assert "| fp32 | 0.500 | 32.0 | 40.0 | 20.0% of TF32 |" in text  # 40 / 200
    assert "| bf16 | 0.400 | 40.0 | 50.0 | 12.5% of bf16 |" in text  # 50 / 400
    assert "20000.0 GFLOP, counted once on the fp32 step" in text
    assert "| TF32 | 200.0 | 150.0 | 100.0 | 210.0 | 5.25 |" in text
    assert "in 2.00 s: 5 TFLOP/s, 10.0% of fp32" in text  # 10 TFLOP in 2 s against 50
    assert "aten.some_attention" in text
    assert "500.0 images/s" in text
    assert "40 GFLOP per image: 20.0 TFLOP/s, 40.0% of fp32" in text  # 40 G x 500
    recipe = _table_rows(text, "| attack | eps/255")
    assert recipe[2:] == ["| clean | 0 | 0.900 | 0.950 | 300.0 |",
                          "| pgd | 2 | 0.500 | 0.600 | 60.0 |",
                          "| standard | 2 | 0.200 | n/a | 1.5 |",
                          "| standard | 8 | 0.000 | 0.300 | 1.2 |"]
    assert "Headline epsilon: 2/255" in text
    assert "- skipped: training speed bf16+compile (no time left)" in text


def test_report_without_peaks_or_counts_says_n_a() -> None:
    report = copy.deepcopy(REPORT)
    for key in ("peaks", "train_flops", "robustify", "recipe"):
        del report[key]
    del report["eval"]["flops"]
    text = gpu_check.render(report, ARGS)
    assert "| fp32 | 0.500 | 32.0 | n/a | n/a |" in text
    assert "## GEMM peak" not in text and "TFLOP/s," not in text and "Robust backbone" not in text


def test_count_flops_counts_matmuls_under_autograd_grad() -> None:
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(16, 4)

    def work() -> None:
        torch.autograd.grad((x @ w).sum(), x)

    flops, missed = gemm_peak.count_flops(work)
    # forward 8x16 @ 16x4 and the input gradient 8x4 @ 4x16: 2mnk each
    assert flops == 2 * (2 * 8 * 16 * 4)
    assert missed == []


def test_gpu_peaks_refuse_the_cpu_only_route_and_restore_tf32() -> None:
    with pytest.raises(ValueError, match="CPU-only"):
        gemm_peak.gemm_peak(16, torch.float32, 1, "onednn", device="cuda")
    saved = torch.backends.cuda.matmul.allow_tf32
    peaks = gpu_check.step_peaks(16, "cpu", 1)
    assert set(peaks) == {"tokens", "fp32", "bf16"}  # no TF32 on a CPU
    assert set(peaks["fp32"]["each"]) == {"qkv", "proj", "fc1", "fc2"}
    assert torch.backends.cuda.matmul.allow_tf32 == saved


def test_count_flops_names_heavy_ops_it_cannot_count_and_only_those() -> None:
    q = torch.randn(1, 2, 8, 4)
    image = torch.rand(1, 3, 8, 8)

    def work() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.nn.functional.interpolate(image, scale_factor=2, mode="bilinear")

    flops, missed = gemm_peak.count_flops(work)
    # fused attention is counted (CUDA) or named (the CPU's kernel has no formula); a bilinear
    # resize does no matrix arithmetic and is neither
    assert flops > 0 or any("attention" in name for name in missed)
    assert not any("upsample" in name for name in missed)


@pytest.mark.gpu
def test_gpu_peaks_on_cuda_measure_tf32_beside_fp32() -> None:
    peaks = gpu_check.step_peaks(1024, "cuda", 2)
    assert set(peaks) == {"tokens", "fp32", "tf32", "bf16"}
    assert all(peaks[k]["tflops"] > 0 for k in ("fp32", "tf32", "bf16"))
