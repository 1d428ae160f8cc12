"""The GPU check (benchmarks/gpu_check.py): its report from a synthetic result renders every
section, with TFLOP/s and shares of the GEMM peak that are the arithmetic they claim; its driver
on a simulated clock fits the steps in the budget, standard at 2/255 before 8/255; the FLOP
counter (gemm_peak.count_flops) against 2mnk per matmul."""

from __future__ import annotations

import argparse
import copy
import json
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


def test_count_flops_counts_fused_attention_as_its_explicit_matmuls() -> None:
    q, k, v = (torch.randn(2, 3, 9, 4) for _ in range(3))
    image = torch.rand(1, 3, 8, 8)

    def fused() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.nn.functional.interpolate(image, scale_factor=2, mode="bilinear")

    def explicit() -> None:
        ((q @ k.transpose(-2, -1)) * 0.5).softmax(-1) @ v

    flops, missed = gemm_peak.count_flops(fused)
    # the fused kernel (CPU or CUDA) counts the two matmuls it replaces, 2 * 2 B H L S E,
    # as the explicit version's bmm formulas do; a bilinear resize is no matrix arithmetic
    assert flops == gemm_peak.count_flops(explicit)[0] == 2 * (2 * 2 * 3 * 9 * 9 * 4)
    assert missed == []


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
def test_count_flops_names_heavy_ops_it_has_no_formula_for() -> None:
    a, w = torch.randn(8, 16), torch.randn(4, 16)

    def work() -> None:
        # oneDNN's linear (patchguard's kernels on AVX-512 CPUs) has no formula in torch's
        # registry: the counter must say so rather than count it as nothing
        torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")

    flops, missed = gemm_peak.count_flops(work)
    assert flops == 0 and any("linear" in name for name in missed)


@pytest.mark.gpu
def test_gpu_peaks_on_cuda_measure_tf32_beside_fp32() -> None:
    peaks = gpu_check.step_peaks(1024, "cuda", 2)
    assert set(peaks) == {"tokens", "fp32", "tf32", "bf16"}
    assert all(peaks[k]["tflops"] > 0 for k in ("fp32", "tf32", "bf16"))


class _FakeMachine:
    """The driver's children on a simulated clock, at durations an H200 might take: each step
    takes ``seconds[name]`` (or runs into its time limit and returns nothing)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.now = 0.0
        self.seconds = seconds
        self.ran: list[str] = []

    def run_step(self, args: list[str], timeout: float, log: Path) -> dict | None:
        if timeout < 5:
            return None
        name = "robustify" if "--robustify" in args else args[args.index("--variants") + 1]
        if self.seconds[name] > timeout:
            self.now += timeout
            return None
        self.now += self.seconds[name]
        self.ran.append(name)
        if name == "robustify":
            return {"robustify": {**REPORT["robustify"]}}
        variants = args[args.index("--variants") + 1:args.index("--batch-size")]
        variants = [v for v in variants if not v.startswith("--")]
        return {"train": {v: {**REPORT["train"]["bf16" if "bf16" in v else "fp32"]}
                          for v in variants}, "peaks": REPORT["peaks"], "eval": REPORT["eval"]}

    def run_cli(self, args: list[str], timeout: float, log: Path, grace: float = 60.0):
        if args[0] == "train":
            run_dir = Path(args[args.index("--output-dir") + 1])
            run_dir.mkdir(parents=True)
            (run_dir / "last.pt").write_text("")
            (run_dir / "train_log.jsonl").write_text('{"loss": 1.0, "images_per_s": 30.0}\n')
            self.now += min(timeout, 60 * 1.5 + 20)
            self.ran.append("recipe")
            return 0
        attack = args[args.index("--attack") + 1]
        epsilons = args[args.index("--epsilon-test") + 1:args.index("--steps-test")]
        name = f"{attack} {'/'.join(epsilons)}"
        if self.seconds[attack] > timeout:
            self.now += timeout + min(grace, 5)
            return None
        self.now += self.seconds[attack]
        self.ran.append(name)
        rows = [{"attack": "clean" if e == "0" else attack, "epsilon": float(e),
                 "image_auroc": 0.5, "pixel_auroc": 0.5, "images_per_s": 1.0}
                for e in dict.fromkeys(["0", *epsilons])]  # test always has its clean row
        Path(args[args.index("--json") + 1]).write_text(json.dumps(rows))
        return 0


@pytest.mark.parametrize("compile_s, standard_s, expected", [
    (60.0, 65.0, ["fp32", "robustify", "bf16+compile", "recipe", "pgd 0/2/8", "standard 2",
                  "standard 8"]),
    # compilation that never finishes in its limit and a slower standard: 2/255 still runs
    (1e9, 80.0, ["fp32", "robustify", "recipe", "pgd 0/2/8", "standard 2"]),
])
def test_driver_fits_every_step_in_the_budget_standard_2_first(
        monkeypatch, tmp_path, compile_s, standard_s, expected) -> None:
    machine = _FakeMachine({"fp32": 50.0, "robustify": 35.0, "bf16+compile": compile_s,
                            "pgd": 25.0, "standard": standard_s})

    class Budget:
        def __init__(self, seconds: float) -> None:
            self.deadline = machine.now + seconds

        def left(self) -> float:
            return self.deadline - machine.now

    def fake_demo(root, classes, image_size):
        machine.now += 10.0  # the machine's description and the demo data
        (Path(root) / "washer" / "train" / "good").mkdir(parents=True)
        for i in range(60):
            (Path(root) / "washer" / "train" / "good" / f"{i:03d}.png").write_text("")

    import patchguard.demo.dataset

    monkeypatch.setattr(gpu_check, "Budget", Budget)
    monkeypatch.setattr(gpu_check, "run_step", machine.run_step)
    monkeypatch.setattr(gpu_check, "run_cli", machine.run_cli)
    monkeypatch.setattr(gpu_check, "machine", lambda: {"gpu": "simulated"})
    monkeypatch.setattr(patchguard.demo.dataset, "build_demo_dataset", fake_demo)
    args = argparse.Namespace(
        budget=460.0, recipe_minutes=1.5, recipe_variant="fp32", batch_size=16, timed_steps=5,
        weights=str(tmp_path / "none.safetensors"), data=str(tmp_path / "work"),
        device="cuda", smoke=False, out=str(tmp_path / "out"))
    gpu_check.drive(args)
    assert machine.ran == expected
    assert machine.now <= 460.0
    report = (tmp_path / "out" / "gpu_report.md").read_text()
    assert "the check stopped" not in report
    assert "| standard | 2 |" in report
    if "standard 8" not in expected:
        assert "- skipped: recipe evaluation with standard at 8/255" in report
        assert "- skipped: training speed bf16+compile" in report
