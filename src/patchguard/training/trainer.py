"""The training loop: epochs over the loader, one :class:`.task.TrainingTask` step per batch,
loss metering and logging, checkpoints (time-based, periodic, on Ctrl-C and SIGTERM) and
resuming. What a step computes lives in :mod:`.task`; what it iterates over in
:mod:`.loader`; the held-out images in :mod:`.heldout`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.datasets import TrainDataset
from ..data.layouts import load_records
from ..data.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size
from ..evaluation.report.plots import plot_training_log
from ..models.factory import build_model
from ..utils.checkpoint import check_weights, load_checkpoint, save_checkpoint
from ..utils.device import cuda_speed_settings, resolve_device
from .distributed import (
    DistContext,
    GlobalBatchSampler,
    barrier,
    broadcast_parameters,
    init_distributed,
    shutdown,
    sum_over_ranks,
)
from .heldout import probe_images, split_validation, validation_thresholds
from .loader import foreground_records, make_loader
from .optim import build_optimizer, build_scheduler
from .robust import PerturbationBank, adv_schedule, freeze_blocks
from .run_state import (
    CheckpointPolicy,
    check_resumable,
    checkpoint_payload,
    reset_log,
    set_rng_state,
)
from .runs import prepare_run, release_run_folder
from .task import StepResult, TrainingTask

logger = logging.getLogger(__name__)

# Seconds between reads of the running losses (progress bar, finiteness check); each read waits
# for the device, so a GPU is not made to idle after every step.
LOG_INTERVAL_S = 2.0


class LossMeter:
    """Per-epoch sums of the step losses, weighted by batch size, accumulated on the device.

    :meth:`totals` is the only synchronisation: the training loop calls it once per logging
    interval. A non-finite loss anywhere in the epoch makes the summed total non-finite, so the
    check there catches it without a per-step synchronisation.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.names: tuple[str, ...] = ()
        self.seen = 0

    def add(self, result: StepResult, n: int) -> None:
        """Add one step's losses for ``n`` images."""
        # float64: sums over long epochs stay exact enough and cannot overflow to inf.
        weighted = result.values.detach().double() * n
        self.sums = weighted if self.sums is None else self.sums + weighted
        self.names = result.names
        self.seen += n

    def totals(self) -> dict[str, float]:
        """Image-weighted loss sums per key ("loss", "reg", views); FloatingPointError if one
        step's loss was not finite."""
        if self.sums is None:
            return {}
        values = self.sums.tolist()
        if not math.isfinite(values[0]):
            raise FloatingPointError(
                "training loss is not finite; lower --lr or --backbone-lr, or disable --bf16"
            )
        return dict(zip(("loss", "reg", *self.names), values))


def train(
    config: TrainConfig | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    loggers: Sequence[str] = (),
    log_dir: str | Path | None = None,
) -> Path:
    """Train a PatchGuard model for one class; return the path of ``last.pt``.

    Args:
        config: the run's settings; with ``resume`` and no config, the checkpoint's own config
            (see :func:`resume_config` to change some of its keys).
        resume: a checkpoint to continue from.
        progress: show progress bars.
        overwrite: replace a run already in ``config.output_dir`` (its checkpoints, log and
            results are removed once every input has been checked); without it such a folder
            is refused unless ``resume`` continues that run.
        loggers: experiment trackers (``tensorboard``, ``mlflow``, ``csv``) that get every
            epoch's losses, learning rate and images/s besides ``train_log.jsonl``.
        log_dir: where they write (default ``OUTPUT_DIR/logs``).
    """
    from ..tracking import check_loggers

    loggers = check_loggers(loggers)  # a missing package fails before any work

    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        check_resumable(state, resume)
        if config is None:
            config = TrainConfig.from_dict(state["config"], source=str(resume))
        logger.info("resuming from %s after epoch %d", resume, state["epoch"])
    if config is None:
        raise ValueError("train() needs a config or a checkpoint to resume")
    # Every input is checked before anything is written, truncated or deleted.
    config = prepare_run(config, state, resume, overwrite)  # locks the run folder
    locked = config
    try:
        if state is None:  # a recipe's robust backbone fine-tuning step, cached (robustify.py)
            from .robustify import robust_backbone_for

            config = robust_backbone_for(config, progress)
        if config.head == "knn":  # a memory bank, built in one pass: no optimiser, no epochs
            from .memory_bank import build_memory_bank

            return build_memory_bank(config, progress)
        ctx = init_distributed(config.device)
        try:
            with cuda_speed_settings(resolve_device(config.device), config.tf32):
                return _train(config, state, resume, progress and ctx.is_main, ctx, loggers,
                              log_dir)
        finally:
            shutdown(ctx)
    finally:
        release_run_folder(locked)


def _train(config: TrainConfig, state: dict | None, resume, progress: bool,
           ctx: DistContext, loggers: Sequence[str] = (),
           log_dir: str | Path | None = None) -> Path:
    from tqdm.auto import tqdm

    from ..tracking import Trackers, open_trackers

    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    records = load_records(config.dataset, config.dataset_dir, config.class_name, "train")
    if ctx.is_main:  # one rank writes generated masks; the others read them after the barrier
        records = foreground_records(records, config, device, progress)
    barrier(ctx)
    if not ctx.is_main:
        records = load_records(config.dataset, config.dataset_dir, config.class_name, "train")
    records, val_records = split_validation(records, config.val_fraction, config.seed)
    generator = PseudoAnomalyGenerator(
        min_patch_size(config.dataset, config.class_name, config.image_size),
        size_scale=config.pseudo_size_scale,
    )
    dataset = TrainDataset(records, config.image_size, generator, config.seed, progress=progress)
    if dataset.foreground_count == 0:
        logger.info("no foreground masks for %s: the whole image counts as foreground%s",
                    config.class_name, "" if config.auto_foreground else
                    " (generate masks with --auto-foreground or 'patchguard data foreground')")
    model, weight_source = build_model(config, load_weights=state is None)
    model.to(device)
    freeze_blocks(model, config.frozen_blocks)
    if config.compile:
        blocks = model.compile_backbone()
        model.compile_attack()
        logger.info("torch.compile on the attack's forward and on blocks %s of the training "
                    "forward (regularised blocks stay eager)", blocks)
        if device.type == "cpu":
            logger.warning("--compile on a CPU: compiled code does not use the oneDNN linears "
                           "and measured slower than eager here; it is meant for GPUs")
    optimizer = build_optimizer(model, config)
    steps_per_epoch = GlobalBatchSampler(len(dataset), config.batch_size, ctx, 0, 0).steps()
    scheduler = build_scheduler(optimizer, steps_per_epoch, config)
    start_epoch = 0
    if state is not None:
        check_weights(resume, state["model"], model.state_dict())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        weight_source = state.get("weight_source", "resumed checkpoint")
    broadcast_parameters(model, ctx)
    extra = {
        "weight_source": weight_source,
        "train_summary": {
            "dataset": config.dataset,
            "class_name": config.class_name,
            "n_train_images": len(dataset),
            "n_validation_images": len(val_records),
            "foreground_masks": dataset.foreground_count,
        },
    }
    log_path = out_dir / "train_log.jsonl"
    last_path = out_dir / "last.pt"
    if ctx.is_main:
        reset_log(log_path, start_epoch)
        logger.info("training %s/%s on %s%s: %d images, %d epochs, backbone weights: %s",
                    config.dataset, config.class_name, device,
                    f" x {ctx.world_size} processes" if ctx.enabled else "", len(dataset),
                    config.epochs, weight_source)
    total_steps = config.epochs * steps_per_epoch
    bank = None
    if config.carry_perturbations and config.adv_train:
        bank = PerturbationBank(len(dataset), (3, config.image_size, config.image_size), device)
    probe = None
    if config.probe_every and ctx.is_main:
        probe = probe_images(records, val_records, config, generator, model.patch_size, device)
    model.train()
    task = TrainingTask(model, config, device, ctx)
    epoch = start_epoch
    loader = make_loader(dataset, config, start_epoch, ctx)
    policy = CheckpointPolicy(last_path, config.checkpoint_every_min,
                              saved_epoch=start_epoch if state is not None else None)
    trackers = Trackers()
    if ctx.is_main and loggers:
        # purge_step: a resumed run's trackers drop what they hold past the checkpoint's epoch.
        trackers = open_trackers(loggers, log_dir or out_dir / "logs", "train",
                                 purge_step=start_epoch + 1)
        trackers.params(config.to_dict())
    restore_sigterm = _sigterm_as_interrupt()
    try:
        for epoch in range(start_epoch, config.epochs):
            started = last_read = time.perf_counter()
            cpu_started = time.process_time()
            meter = LossMeter()
            loader.sampler.set_epoch(epoch)
            bar = tqdm(loader, disable=not progress,
                       leave=False, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
            lr = optimizer.param_groups[-1]["lr"]
            for i, batch in enumerate(bar):
                schedule = adv_schedule(config, epoch * steps_per_epoch + i, total_steps)
                result = task.step(batch, optimizer, schedule, bank)
                scheduler.step()
                meter.add(result, batch["image"].shape[0])
                now = time.perf_counter()
                if now - last_read >= LOG_INTERVAL_S:  # the only host synchronisation
                    last_read = now
                    loss = meter.totals()["loss"] / meter.seen
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{meter.seen / (now - started):.1f}")
            totals, seen = meter.totals(), meter.seen
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
            if ctx.enabled:  # every rank's images and losses count in the log
                keys = sorted(totals)
                summed = sum_over_ranks([seen, *(totals[k] for k in keys)], ctx)
                seen, totals = int(summed[0]), dict(zip(keys, summed[1:]))
            if not ctx.is_main:
                continue
            record = {
                "epoch": epoch + 1,
                **{k: v / max(seen, 1) for k, v in totals.items()},
                "lr": lr,
                "images_per_s": seen / seconds,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,  # of this process, all threads (not the probe's)
            }
            if config.adv_train:
                record.update(epsilon_train=schedule.epsilon * 255.0, steps_train=schedule.steps)
            done = epoch + 1
            if probe is not None and (done % config.probe_every == 0 or done == config.epochs):
                record.update(probe.check(model, done, record["loss"]))
                model.train()
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            trackers.scalars({f"train/{k}": v for k, v in record.items() if k != "epoch"},
                             epoch + 1)
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}  loss {record['loss']:.4f}  "
                    f"{record['images_per_s']:.1f} img/s"
                )
            payload = checkpoint_payload(model, optimizer, scheduler, config, epoch + 1, extra)
            periodic = None
            if done > config.epochs / 2 and config.save_every and done % config.save_every == 0:
                periodic = out_dir / f"epoch_{done:04d}.pt"
            policy.epoch_done(payload, final=done == config.epochs, periodic=periodic)
    except BaseException as error:
        # Ctrl-C, SIGTERM or an error: last.pt gets the last completed epoch if it lacks it.
        saved = None
        if ctx.is_main:
            try:
                saved = policy.flush()
            except Exception as save_error:  # the original error is the one to report
                logger.error("could not write %s: %s", last_path, save_error)
        if isinstance(error, KeyboardInterrupt) and ctx.is_main:
            # The resume command itself is printed once, by the CLI's error report.
            logger.warning(
                "interrupted during epoch %d; %s holds %s", epoch + 1, last_path,
                "no epoch yet" if policy.saved_epoch is None else
                f"epoch {policy.saved_epoch}" + (" (written now)" if saved is not None else ""))
        raise
    finally:
        restore_sigterm()
        trackers.close()
        del loader  # its persistent worker processes end here
    if not ctx.is_main:
        return last_path
    if val_records:
        extra.update(validation_thresholds(model, val_records, config, device, progress))
        model.train()
    if val_records or (start_epoch >= config.epochs and not last_path.exists()):
        save_checkpoint(last_path, checkpoint_payload(model, optimizer, scheduler, config,
                                                      max(start_epoch, config.epochs), extra))
    if log_path.exists() and log_path.stat().st_size:
        plot_training_log(log_path, out_dir / "train_curves.png")
    return last_path


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM (a job scheduler's or ``docker stop``'s) act like Ctrl-C until the returned
    function is called, so that it too leaves the last completed epoch in last.pt."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM,
                                 signal.SIG_DFL if previous is None else previous)


