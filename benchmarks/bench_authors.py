"""Training step against the authors' own code, side by side: their ``train_step`` and ours.

The authors' repository (https://github.com/rohban-lab/PatchGuard) is not part of this project:
check it out yourself (e.g. ``git clone ... /tmp/authors_pg``) and give its folder with
``--authors``; it is imported from there by a worker process and never copied. Their code needs
the ``noise`` package besides ours (``pip install --target /tmp/authors_deps noise`` and
``--authors-deps /tmp/authors_deps``).

Both steps run fp32 on the same kind of batch (``--batch-size`` smooth random textures, random
initialisation, the paper's recipe: ViT-S/14 DINOv2, feature layer 12, regularised layers
6/9/12, PGD at 8/255 on clean and pseudo-anomalous views). Each runs in its own process,
alternating, the order reversed every round; medians of wall and CPU seconds per step.

- ``authors``: their ``train_step`` as it is, which makes the pseudo anomalies inside the step
  (in the training process);
- ``authors-train``: the same step with the pseudo anomalies made once beforehand (their
  generator replaced by one returning them), i.e. the training computation alone;
- ``ours``: patchguard's ``training_step`` (its loader makes pseudo anomalies in worker
  processes, so the step is the training computation alone, as ``authors-train``);
- ``ours-mkl``: the same with ``PATCHGUARD_ONEDNN_LINEAR=0`` (PyTorch's own ``F.linear``,
  MKL's sgemm on CPUs, as the authors' code uses);
- ``ours-compile``: ours with ``--compile`` (torch.compile of the attack's forward and the
  unregularised blocks; compiled during the warm-up step).

``--profile`` also prints, per implementation, the top operators of one step by self CPU time
(torch.profiler), and whether oneDNN (mkldnn) is available and which linear kernels ran.

``--flops`` counts each step's FLOPs (``torch.utils.flop_counter``), measures this CPU's fp32
GEMM peak on ViT-S's shapes in the same run (``gemm_peak.py``'s measurement, MKL's sgemm at the
step's token count) and prints each step's achieved share of it, and the ceiling those two
figures put on the ratio: the authors' CPU time over ours if ours ran every FLOP it does at
the full GEMM peak, with nothing else costing anything.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_authors.py --authors /tmp/authors_pg \\
        --authors-deps /tmp/authors_deps --settings paper112 --rounds 5 --threads 1 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sidebyside  # noqa: E402

SETTINGS = {"paper112": (112, 3), "paper224": (224, 10)}  # image size, PGD steps


# ----------------------------------------------------------------------------- worker side


class Authors:
    """The authors' model, optimiser, loss and a fixed batch, from their own modules."""

    def __init__(self, setting: str, batch_size: int, cached_pseudo: bool) -> None:
        import torch
        import train_model  # the authors' module, from --authors on PYTHONPATH
        from loss import Loss
        from pseudo_anomaly import AnomalyGenerator
        from torch import optim

        from patchguard import PatchGuard

        size, steps = SETTINGS[setting]
        self.args = argparse.Namespace(
            hf_path="vit_small_patch14_dinov2.lvd142m", feature_layers=[12],
            reg_layers=[6, 9, 12], image_size=size, hidden_dim=2048, dsc_layers=1,
            dsc_heads=4, adv_train=True, epsilon_train=8 / 255, step_train=steps,
            use_tqdm=False, lr=0.0008)
        train_model.set_seed(0)
        self.device = torch.device("cpu")
        self.model = PatchGuard(self.args, self.device).to(self.device).train()
        _accept_is_causal(self.model.feature_extractor.pretrained_model)
        self.optimizer = optim.AdamW(self.model.parameters(), lr=self.args.lr)
        self.criterion = Loss("KL_divergence", self.device, self.model.num_patches)
        self.generator = AnomalyGenerator("mvtec", "bottle", 0)
        images = _textures(batch_size, size)
        self.batch = (images, torch.zeros(batch_size), torch.zeros(batch_size, 1, size, size),
                      torch.ones(batch_size, 1, size, size))
        if cached_pseudo:
            made = self.generator(images.clone(), self.batch[3])
            self.generator = lambda imgs, masks: (made[0].clone(), made[1].clone())
        self.train_step = train_model.train_step

    def step(self) -> None:
        """One training step of theirs on the fixed batch."""
        self.train_step(self.model, self.generator, [self.batch], self.optimizer,
                        self.criterion, True, self.device, self.args)


def _accept_is_causal(vit) -> None:
    """Their attention wrapper predates timm's ``is_causal`` keyword (timm >= 1.0.20 passes
    it): drop it (always False for a ViT) before their forward, which is otherwise unchanged."""
    for block in vit.blocks:
        forward = block.attn.forward
        if getattr(forward, "__name__", "") == "my_forward":  # the blocks they wrapped
            block.attn.forward = (lambda x, attn_mask=None, is_causal=False, _f=forward:
                                  _f(x, attn_mask=attn_mask))


class Ours:
    """patchguard's step (bench_train's runner) at the same setting and batch size."""

    def __init__(self, setting: str, batch_size: int, compile: bool = False) -> None:
        import bench_train

        self.runner = bench_train.Runner(setting, {"batch_size": batch_size,
                                                   "compile": compile}, "cpu")

    def step(self) -> None:
        """One training step of ours on the fixed batch."""
        self.runner.step()


def _textures(n: int, size: int):
    """Smooth random textures in [0, 1] (as bench_train's batch)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(1234)
    coarse = rng.integers(0, 255, (n, size // 8, size // 8, 3)).astype(np.float32)
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255) / 255.0
    return torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


_IMPL: dict[str, object] = {}


def _setup(cmd: dict) -> dict:
    _IMPL.clear()
    kind = cmd["kind"]
    if kind == "ours-mkl":  # read when patchguard's kernels are imported, below
        os.environ["PATCHGUARD_ONEDNN_LINEAR"] = "0"
    started = time.perf_counter()
    impl = (Ours(cmd["setting"], cmd["batch_size"], kind == "ours-compile")
            if kind.startswith("ours") else
            Authors(cmd["setting"], cmd["batch_size"], kind == "authors-train"))
    _IMPL["impl"] = impl
    for _ in range(2 if kind == "ours-compile" else 1):  # warm-up (and compilation)
        impl.step()
    return {"seconds": [time.perf_counter() - started]}


def _time(cmd: dict) -> dict:
    impl = _IMPL["impl"]
    wall, cpu = time.perf_counter(), time.process_time()
    impl.step()
    return {"seconds": [time.perf_counter() - wall], "cpu": [time.process_time() - cpu]}


def _profile(cmd: dict) -> dict:
    import torch
    from torch.profiler import profile

    with profile() as prof:
        _IMPL["impl"].step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=cmd["rows"])
    names = {e.key for e in prof.key_averages()}
    return {"table": table, "mkldnn_available": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "linear_kernels": sorted(n for n in names if "linear" in n.lower() or
                                     n in ("aten::addmm", "aten::mm", "aten::bmm"))}


def _count_flops(cmd: dict) -> dict:
    import gemm_peak

    return {"flops": gemm_peak.count_flops(_IMPL["impl"].step)[0]}


def _peak(cmd: dict) -> dict:
    import torch

    import gemm_peak

    tokens = cmd["batch_size"] * 2 * ((cmd["size"] // 14) ** 2 + 1)  # an attack run's rows
    peak, _ = gemm_peak.gemm_peak(tokens, torch.float32, cmd["repeats"], "torch")
    return {"gflops": peak, "tokens": tokens}


def worker() -> None:
    """Serve the driver's commands."""
    sidebyside.serve({"setup": _setup, "time": _time, "profile": _profile,
                      "flops": _count_flops, "peak": _peak})


# ----------------------------------------------------------------------------- driver side


def _report_flops(workers, replies: dict, setting: str, batch_size: int) -> None:
    """Each step's GFLOP and share of the GEMM peak, and the ceiling they put on the ratio."""
    size, _ = SETTINGS[setting]
    peak = workers[-1].ask(cmd="peak", batch_size=batch_size, size=size, repeats=5)
    print(f"  [{setting}] fp32 GEMM peak (MKL sgemm, ViT-S block shapes, {peak['tokens']} "
          f"rows): {peak['gflops']:.1f} GFLOP/s", flush=True)
    counted = {}
    for w in workers:
        flops = w.ask(cmd="flops")["flops"]
        cpu = sidebyside.median_of(replies[w.label], "cpu")
        counted[w.label] = (flops, cpu)
        share = flops / cpu / 1e9 / peak["gflops"]
        print(f"  [{setting}] {w.label:>13}: {flops / 1e9:8.1f} GFLOP/step, "
              f"{flops / cpu / 1e9:6.1f} GFLOP/s, {share:6.1%} of the GEMM peak", flush=True)
    theirs = [counted[k] for k in counted if k.startswith("authors")]
    ours = [counted[k] for k in counted if k.startswith("ours")]
    if theirs and ours:
        (a_flops, a_cpu), (o_flops, o_cpu) = theirs[0], min(ours, key=lambda fc: fc[1])
        floor = o_flops / (peak["gflops"] * 1e9)
        print(f"  [{setting}] FLOPs authors / ours: {a_flops / o_flops:.2f}x (the ratio at equal "
              f"efficiency); measured CPU time ratio {a_cpu / o_cpu:.2f}x; ceiling with ours at "
              f"100 % of the peak: {a_cpu / floor:.2f}x", flush=True)


def main() -> None:
    """Run the driver (or, with --worker, a worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--authors", help="a checkout of the authors' repository")
    parser.add_argument("--authors-deps", default="", help="extra site folder (e.g. noise)")
    parser.add_argument("--settings", nargs="+", default=["paper112"], choices=sorted(SETTINGS))
    parser.add_argument("--kinds", nargs="+", default=["authors", "authors-train", "ours"],
                        choices=["authors", "authors-train", "ours", "ours-mkl",
                                 "ours-compile"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cpus", default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--flops", action="store_true",
                        help="count FLOPs per step and compare with this CPU's GEMM peak")
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if not args.authors or not (Path(args.authors) / "train_model.py").exists():
        parser.error("--authors must be a checkout of the authors' repository (train_model.py)")
    here = Path(__file__).resolve().parent
    authors_path = ":".join(p for p in (args.authors, args.authors_deps, str(here)) if p)
    paths = {"authors": authors_path, "authors-train": authors_path,
             "ours": f"{sidebyside.CURRENT_SRC}:{here}"}
    paths["ours-mkl"] = paths["ours-compile"] = paths["ours"]
    print(f"batch {args.batch_size}, fp32, threads {args.threads or 'default'}, load "
          f"{sidebyside.load_average()}", flush=True)
    for setting in args.settings:
        workers = [sidebyside.Worker(kind, Path(paths[kind]), __file__, {}, args.threads,
                                     args.cpus) for kind in args.kinds]
        try:
            size, steps = SETTINGS[setting]
            print(f"[{setting}] {size} px, PGD-{steps}", flush=True)
            for w in workers:
                reply = w.ask(cmd="setup", kind=w.label, setting=setting,
                              batch_size=args.batch_size)
                print(f"  {w.label}: set-up and warm-up {reply['seconds'][0]:.1f} s", flush=True)
            replies = sidebyside.alternate(workers, args.rounds,
                                           lambda w: w.ask(cmd="time"))
            base = workers[-1].label
            for w in workers:
                wall = sidebyside.median_of(replies[w.label])
                cpu = sidebyside.median_of(replies[w.label], "cpu")
                paired = statistics.median(a["cpu"][0] / b["cpu"][0] for a, b in
                                           zip(replies[w.label], replies[base]))
                print(f"  [{setting}] {w.label:>13}: {wall:7.2f} s/step wall, {cpu:7.2f} "
                      f"CPU s/step; CPU time / {base}'s: x{paired:.2f} (per-round median)",
                      flush=True)
            if args.flops:
                _report_flops(workers, replies, setting, args.batch_size)
            if args.profile:
                for w in workers:
                    reply = w.ask(cmd="profile", rows=args.profile_rows)
                    print(f"  [{setting}] {w.label} profile (oneDNN available "
                          f"{reply['mkldnn_available']}, CPU {reply['cpu_capability']}, linear "
                          f"kernels {reply['linear_kernels']}):\n{reply['table']}", flush=True)
        finally:
            for w in workers:
                w.close()
    print(json.dumps({"load_after": sidebyside.load_average()}))


if __name__ == "__main__":
    main()
