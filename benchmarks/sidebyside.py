"""Side-by-side timing of two patchguard source trees, for bench_train.py and bench_eval.py.

Each implementation (a source tree plus config overrides, e.g. bf16) runs in its own worker
process with its own PYTHONPATH, so each imports its own ``patchguard``. The driver asks the
workers in turn for a few timed repetitions, reversing the order every round, and reports
medians and ratios to the first implementation (the reference). The reference defaults to
commit a0df06f (main before the speed work), checked out into a temporary git worktree under
/tmp and removed at the end.

The worker side speaks to both layouts: the flat one of a0df06f (patchguard.training,
patchguard.model, ...) and the packages of today (patchguard.training.trainer, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

REFERENCE_COMMIT = "a0df06f"
REPO = Path(__file__).resolve().parents[1]
CURRENT_SRC = REPO / "src"


# ----------------------------------------------------------------------------- worker side


def api() -> types.SimpleNamespace:
    """The functions the benchmarks need, from whichever layout this process imports."""
    from patchguard.config import TrainConfig, build_config

    ns = types.SimpleNamespace(TrainConfig=TrainConfig, build_config=build_config,
                               cuda_speed_settings=None)
    try:  # today's packages
        from patchguard.data.datasets import TestDataset, TrainDataset, sample_rng, to_tensor
        from patchguard.data.layouts import load_records
        from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size
        from patchguard.evaluation.evaluator import evaluate
        from patchguard.models.factory import build_model
        from patchguard.training import trainer
        from patchguard.training.optim import build_optimizer

        if hasattr(trainer, "training_step"):  # before the step moved to training.task
            ns.training_step, ns.make_loader = trainer.training_step, trainer.make_loader
            ns.cuda_speed_settings = getattr(trainer, "cuda_speed_settings", None)
        else:
            from patchguard.training.loader import make_loader
            from patchguard.training.task import training_step
            from patchguard.utils.device import cuda_speed_settings

            ns.training_step, ns.make_loader = training_step, make_loader
            ns.cuda_speed_settings = cuda_speed_settings
        ns.layout = "packages"
    except ImportError:  # the flat layout of a0df06f
        from patchguard import training as trainer
        from patchguard.data import (
            TestDataset,
            TrainDataset,
            load_records,
            sample_rng,
            to_tensor,
        )
        from patchguard.evaluation import evaluate
        from patchguard.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size

        build_model, build_optimizer = trainer.build_model, trainer.build_optimizer
        ns.training_step, ns.make_loader = trainer.training_step, trainer.make_loader
        ns.layout = "flat"
    ns.TestDataset, ns.TrainDataset, ns.load_records = TestDataset, TrainDataset, load_records
    ns.sample_rng, ns.to_tensor, ns.evaluate = sample_rng, to_tensor, evaluate
    ns.PseudoAnomalyGenerator, ns.min_patch_size = PseudoAnomalyGenerator, min_patch_size
    ns.build_model, ns.build_optimizer = build_model, build_optimizer
    return ns


def synchronize(device) -> None:
    """Wait for a GPU's queued work (timings must not stop before the device does)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serve(handlers: dict) -> None:
    """Worker loop: one JSON command per stdin line, one JSON reply per stdout line."""
    import torch

    threads = int(os.environ.get("BENCH_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = handlers[cmd["cmd"]](cmd)
        except Exception as error:  # reported to the driver, which decides
            import traceback

            reply = {"error": f"{type(error).__name__}: {error}",
                     "traceback": traceback.format_exc()[-3000:]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ----------------------------------------------------------------------------- driver side


@contextlib.contextmanager
def reference_tree(commit: str | None, given: str | None) -> Iterator[Path | None]:
    """The reference's src folder: ``given``, or ``commit`` in a temporary worktree."""
    if given:
        yield Path(given)
        return
    if not commit:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix=f"pg-ref-{commit}-", dir="/tmp"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit],
                   check=True, capture_output=True)
    try:
        yield folder / "src"
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False,
                       capture_output=True)


class Worker:
    """One implementation in its own process."""

    def __init__(self, label: str, src: Path, script: str, extra: dict, threads: int,
                 cpus: str | None) -> None:
        self.label, self.extra = label, extra
        env = {**os.environ, "PYTHONPATH": str(src)}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
        cmd = [sys.executable, script, "--worker"]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def ask(self, **cmd) -> dict:
        """Send one command; return the reply (raises on a worker error)."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({**cmd, "extra": {**self.extra, **cmd.get("extra", {})}})
                              + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} died")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.label}: {reply['error']}\n{reply.get('traceback')}")
        return reply

    def close(self) -> None:
        """End the worker process."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def parse_impls(specs: list[str]) -> list[tuple[str, dict]]:
    """``LABEL=JSON`` variants of the current tree (config overrides), e.g. ``bf16={"bf16": 1}``."""
    out = []
    for spec in specs:
        label, _, rest = spec.partition("=")
        out.append((label, json.loads(rest or "{}")))
    return out


def load_average() -> str:
    """The 1-minute load average (a busy machine makes wall times noisy)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def alternate(workers: list[Worker], rounds: int, ask_one) -> dict[str, list[dict]]:
    """Ask every worker once per round, the order reversed every other round."""
    replies: dict[str, list[dict]] = {w.label: [] for w in workers}
    for round_ in range(rounds):
        order = workers if round_ % 2 == 0 else workers[::-1]
        for worker in order:
            replies[worker.label].append(ask_one(worker))
        line = "  ".join(f"{w.label} {statistics.median(replies[w.label][-1]['seconds']):.3f}s"
                         for w in workers)
        print(f"    round {round_ + 1}/{rounds}: {line}  (load {load_average()})", flush=True)
    return replies


def median_of(replies: list[dict], key: str = "seconds") -> float:
    """Median over every timed repetition of every round."""
    return statistics.median(v for reply in replies for v in reply[key])


def timer() -> float:
    """Wall clock for the timings."""
    return time.perf_counter()
