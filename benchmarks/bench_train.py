"""Training speed, side by side: this tree against main's commit a0df06f (before the speed work).

One training step (a batch of clean images and their pseudo anomalies, both PGD attacks, the
four-view forward and backward, AdamW) is timed for each implementation in its own process,
alternating A and B, and the medians are printed as images/s and ratios. The reference is
checked out into a temporary git worktree under /tmp (removed at the end). Printed, not
asserted.

Settings:
    paper224  the paper's recipe: 224 px, PGD-10 at 8/255, feature layer 12, reg. 6/9/12
    paper112  the same at 112 px with PGD-3
    fast      the fast preset (112 px, PGD-3, feature layer 6, reg. 2/4/6, batch 8)
The batch is 4 for the paper settings on a CPU (the issue's measurements), 16 on a GPU;
--batch-size overrides it. Random initialisation, fp32 unless a variant says otherwise.

Examples:
    # the acceptance measurement on this 2-core CPU (1 thread pinned when the machine is busy)
    python benchmarks/bench_train.py --settings paper112 paper224 --threads 1 --cpus 1
    # GPU: fp32 eager, bf16 and bf16 + compile against the reference, and the loader's wait
    python benchmarks/bench_train.py --settings paper224 --impl fp32='{}' \\
        --impl bf16='{"bf16": true}' --impl bf16+compile='{"bf16": true, "compile": true}' \\
        --loader-workers 4
    # numerics: per-step losses (dropout 0) against the reference
    python benchmarks/bench_train.py --settings paper112 --numerics 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sidebyside  # noqa: E402

SETTINGS = {
    "paper224": {"preset": "paper", "image_size": 224, "steps_train": 10},
    "paper112": {"preset": "paper", "image_size": 112, "steps_train": 3},
    "fast": {"preset": "fast", "image_size": 112},
}


# ----------------------------------------------------------------------------- worker side


class Runner:
    """A model, optimiser and fixed batch for one setting in this process's patchguard."""

    def __init__(self, setting: str, extra: dict, device: str) -> None:
        import torch

        self.pg = sidebyside.api()
        values = dict(SETTINGS[setting])
        preset = values.pop("preset")
        values.update({"pretrained": False, "device": device, "workers": 0})
        values.update({k: v for k, v in extra.items() if k != "_loader_dir"})
        known = set(self.pg.TrainConfig.__dataclass_fields__)
        self.config = self.pg.build_config(preset, overrides={k: v for k, v in values.items()
                                                               if k in known})
        self.device = torch.device(self.config.device if self.config.device != "auto" else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.pg.cuda_speed_settings is not None:
            # What train() does around the run (TF32 for fp32 on CUDA); the reference has none.
            self._cuda = self.pg.cuda_speed_settings(self.device, self.config.tf32)
            self._cuda.__enter__()
        torch.manual_seed(self.config.seed)
        self.model, _ = self.pg.build_model(self.config, load_weights=False)
        self.model.to(self.device).train()
        if getattr(self.config, "compile", False):
            self.model.compile_backbone()
            if hasattr(self.model, "compile_attack"):
                self.model.compile_attack()
        self.optimizer = self.pg.build_optimizer(self.model, self.config)
        self.batch = self.make_batch()

    def make_batch(self) -> dict:
        """Textures and their pseudo anomalies, made the way TrainDataset makes them."""
        import numpy as np
        import torch

        size, n = self.config.image_size, self.config.batch_size
        rng = np.random.default_rng(1234)
        coarse = rng.integers(0, 255, (n, size // 8, size // 8, 3)).astype(np.float32)
        images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
        images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
        generator = self.pg.PseudoAnomalyGenerator(self.pg.min_patch_size("mvtec", "bottle",
                                                                          size))
        clean, pseudo, masks = [], [], []
        for index in range(n):
            image, mask = generator(images[index], None,
                                    self.pg.sample_rng(self.config.seed, 0, index))
            clean.append(self.pg.to_tensor(images[index]))
            pseudo.append(self.pg.to_tensor(image))
            masks.append(torch.from_numpy(mask.astype(np.float32))[None])
        batch = {"image": torch.stack(clean), "pseudo_image": torch.stack(pseudo),
                 "pseudo_mask": torch.stack(masks), "index": torch.arange(n)}
        if self.device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    def step(self, batch=None):
        """One training step."""
        return self.pg.training_step(self.model, batch or self.batch, self.optimizer,
                                     self.config, self.device)


_RUNNERS: dict[str, Runner] = {}


def _runner(cmd: dict) -> Runner:
    key = cmd["setting"] + json.dumps(cmd["extra"], sort_keys=True)
    if key not in _RUNNERS:
        _RUNNERS.clear()  # one model at a time (GPU memory)
        _RUNNERS[key] = Runner(cmd["setting"], cmd["extra"], cmd["device"])
    return _RUNNERS[key]


def _setup(cmd: dict) -> dict:
    started = sidebyside.timer()
    runner = _runner(cmd)
    for _ in range(cmd["warmup"]):
        runner.step()  # allocations, kernel choice, compilation
    sidebyside.synchronize(runner.device)
    return {"seconds": [sidebyside.timer() - started], "layout": runner.pg.layout,
            "batch_size": runner.config.batch_size}


def _time(cmd: dict) -> dict:
    import time

    runner = _runner(cmd)
    sidebyside.synchronize(runner.device)
    started, cpu = sidebyside.timer(), time.process_time()
    for _ in range(cmd["n"]):
        runner.step()
    sidebyside.synchronize(runner.device)  # one wait for the whole block, as training does
    n = cmd["n"]
    return {"seconds": [(sidebyside.timer() - started) / n],
            "cpu": [(time.process_time() - cpu) / n]}


def _numerics(cmd: dict) -> dict:
    _RUNNERS.clear()
    runner = Runner(cmd["setting"], {**cmd["extra"], "dsc_dropout": 0.0}, cmd["device"])
    losses = []
    for _ in range(cmd["steps"]):
        result = runner.step()
        losses.append([result.total, result.reg, *(result.views[k] for k in sorted(result.views))])
    return {"losses": losses}


def _loader(cmd: dict) -> dict:
    """Real loader with ``workers`` processes: the share of time the step waits for batches."""
    runner = _runner(cmd)
    pg, config = runner.pg, runner.config
    config.workers = cmd["workers"]
    records = pg.load_records("mvtec", cmd["extra"]["_loader_dir"], "bottle", "train")
    generator = pg.PseudoAnomalyGenerator(pg.min_patch_size("mvtec", "bottle",
                                                            config.image_size))
    dataset = pg.TrainDataset(records, config.image_size, generator, config.seed)
    loader = pg.make_loader(dataset, config, 0)
    wait = busy = 0.0
    steps = 0
    for epoch in range(cmd["epochs"]):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        iterator = iter(loader)
        while True:
            t0 = sidebyside.timer()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            t1 = sidebyside.timer()
            runner.step(batch)
            sidebyside.synchronize(runner.device)
            t2 = sidebyside.timer()
            if epoch or steps:  # the first batch includes starting the workers
                wait += t1 - t0
            busy += t2 - t1
            steps += 1
    del loader
    return {"seconds": [busy / max(steps, 1)], "wait_share": wait / max(wait + busy, 1e-9),
            "steps": steps}


def worker() -> None:
    """Serve the driver's commands."""
    sidebyside.serve({"setup": _setup, "time": _time, "numerics": _numerics,
                      "loader": _loader})


# ----------------------------------------------------------------------------- driver side


def _training_images(folder: Path, n: int, size: int) -> Path:
    """An MVTec-layout class "bottle" of n smooth random textures (for the loader test)."""
    import numpy as np
    from PIL import Image

    good = folder / "bottle" / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 255, (size // 16, size // 16, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(good / f"{i:03d}.png")
    return folder


def main() -> None:
    """Run the driver (or, with --worker, a worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", nargs="+", default=["paper224", "fast"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--reference", default=sidebyside.REFERENCE_COMMIT,
                        help="commit to compare against ('' for none)")
    parser.add_argument("--reference-src", default=None,
                        help="an existing source folder to use as the reference instead")
    parser.add_argument("--impl", action="append", default=[],
                        help="LABEL=JSON: a variant of this tree (config overrides); default "
                             "'current={}'")
    parser.add_argument("--extra", default="{}",
                        help="JSON config overrides for every implementation (e.g. a tiny "
                             "backbone for a smoke test)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 4 for the paper settings on CPU, 16 on CUDA; the "
                             "fast preset's 8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per worker per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cpus", default=None, help="taskset CPU list for the workers")
    parser.add_argument("--numerics", type=int, default=0,
                        help="compare N steps' losses (dropout 0) instead of timing")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[],
                        help="also run the real loader with these worker counts (this tree, "
                             "first variant) and print the share of time spent waiting")
    parser.add_argument("--loader-images", type=int, default=64)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    if args.worker:
        worker()
        return

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    impls = sidebyside.parse_impls(args.impl) or [("current", {})]
    common = json.loads(args.extra)
    results: dict = {"device": device, "load_before": sidebyside.load_average(), "settings": {}}
    print(f"device {device}, threads {args.threads or 'default'}, cpus {args.cpus or 'any'}, "
          f"load {results['load_before']}", flush=True)
    with sidebyside.reference_tree(args.reference, args.reference_src) as ref_src, \
            tempfile.TemporaryDirectory() as tmp:
        workers = []
        if ref_src is not None:
            workers.append(sidebyside.Worker(f"ref {args.reference or 'given'}", ref_src,
                                             __file__, common, args.threads, args.cpus))
        for label, extra in impls:
            workers.append(sidebyside.Worker(label, sidebyside.CURRENT_SRC, __file__,
                                             {**common, **extra}, args.threads, args.cpus))
        try:
            for setting in args.settings:
                extra = {}
                if args.batch_size or setting != "fast":
                    extra["batch_size"] = args.batch_size or (16 if cuda else 4)
                if args.numerics:
                    _numerics_report(workers, setting, extra, device, args.numerics)
                    continue
                results["settings"][setting] = _timing(workers, setting, extra, device, args)
                if args.loader_workers:
                    folder = Path(tmp) / setting
                    size = SETTINGS[setting]["image_size"]
                    _training_images(folder, args.loader_images, max(size, 256))
                    target = workers[1] if ref_src is not None else workers[0]
                    results["settings"][setting]["loader"] = {}
                    for count in args.loader_workers:
                        reply = target.ask(cmd="loader", setting=setting, device=device,
                                           workers=count, epochs=2,
                                           extra={**extra, "_loader_dir": str(folder)})
                        results["settings"][setting]["loader"][count] = reply
                        print(f"  [{setting}] {target.label}, real loader with {count} "
                              f"workers: {100 * reply['wait_share']:.1f}% of the time waiting "
                              f"for batches ({reply['steps']} steps)", flush=True)
        finally:
            for w in workers:
                w.close()
    results["load_after"] = sidebyside.load_average()
    print(f"load after {results['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _timing(workers, setting: str, extra: dict, device: str, args) -> dict:
    print(f"[{setting}] {SETTINGS[setting]} {extra}", flush=True)
    batch = None
    for w in workers:
        reply = w.ask(cmd="setup", setting=setting, device=device, warmup=args.warmup,
                      extra=extra)
        batch = reply["batch_size"]
        print(f"  {w.label}: {reply['layout']} layout, set-up and warm-up "
              f"{reply['seconds'][0]:.1f} s", flush=True)
    replies = sidebyside.alternate(workers, args.rounds, lambda w: w.ask(
        cmd="time", setting=setting, device=device, n=args.steps, extra=extra))
    base = sidebyside.median_of(replies[workers[0].label])
    base_cpu = sidebyside.median_of(replies[workers[0].label], "cpu")
    out = {"batch_size": batch}
    for w in workers:
        seconds = sidebyside.median_of(replies[w.label])
        cpu = sidebyside.median_of(replies[w.label], "cpu")
        paired = statistics.median(
            a["seconds"][0] / b["seconds"][0]
            for a, b in zip(replies[workers[0].label], replies[w.label]))
        out[w.label] = {"s_per_step": seconds, "images_per_s": batch / seconds,
                        "ratio": base / seconds, "ratio_per_round": paired,
                        "cpu_s_per_step": cpu, "cpu_ratio": base_cpu / cpu}
        print(f"  [{setting}] {w.label:>14}: {seconds:8.3f} s/step  {batch / seconds:8.3f} "
              f"img/s  x{base / seconds:.2f} (per round x{paired:.2f}; CPU time "
              f"x{base_cpu / cpu:.2f})", flush=True)
    return out


def _numerics_report(workers, setting: str, extra: dict, device: str, steps: int) -> None:
    replies = {w.label: w.ask(cmd="numerics", setting=setting, device=device, steps=steps,
                              extra=extra)["losses"] for w in workers}
    base = replies[workers[0].label]
    print(f"[{setting}] per-step losses [total, reg, views...] with dropout 0, "
          f"against {workers[0].label}")
    for label, losses in replies.items():
        per_step = [max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(sa, sb))
                    for sa, sb in zip(losses, base)]
        print(f"  {label:>14}: max relative difference per step "
              + " ".join(f"{d:.1e}" for d in per_step) + f"; step 1 total {losses[0][0]:.6f}")


if __name__ == "__main__":
    main()
