"""Adversarial training with pseudo anomalies (METHOD.md sections 3 and 4)."""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..adversarial.objectives import anomalous_views, training_objective
from ..adversarial.pgd import fgsm_rs_attack, nfgsm_attack, pgd_attack
from ..config import TrainConfig
from ..data.datasets import TestDataset, TrainDataset
from ..data.layouts import load_records
from ..data.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size
from ..evaluation.evaluator import predict_dataset
from ..evaluation.plots import plot_training_log
from ..inference.thresholds import calibrate_thresholds
from ..models.factory import build_model
from ..models.patchguard import PatchGuard, patch_targets
from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.device import resolve_device
from .checkpoints import (
    CheckpointPolicy,
    check_resumable,
    checkpoint_payload,
    reset_log,
    set_rng_state,
)
from .distributed import (
    DistContext,
    GlobalBatchSampler,
    average_gradients,
    barrier,
    broadcast_parameters,
    init_distributed,
    shutdown,
    sum_over_ranks,
)
from .losses import (
    attention_kl_regularizer,
    binary_kl,
    pairwise_ranking_loss,
    patch_bce_loss,
)
from .optim import build_optimizer, build_scheduler
from .probe import OverfittingProbe
from .robust import AdvSchedule, PerturbationBank, adv_schedule, freeze_blocks
from .runs import prepare_run

logger = logging.getLogger(__name__)

VIEW_NAMES = ("clean", "adv_clean", "pseudo", "adv_pseudo")
# Seconds between reads of the running losses (progress bar, finiteness check); each read waits
# for the device, so a GPU is not made to idle after every step.
LOG_INTERVAL_S = 2.0


class StepResult:
    """Losses of one training step, kept on the device until a value is read.

    Reading ``total``, ``reg`` or ``views`` copies all of them to the host at once (one
    synchronisation); the training loop instead sums :attr:`values` on the device and reads
    them once per logging interval.
    """

    def __init__(self, values: torch.Tensor, names: Sequence[str]) -> None:
        self.values = values  # (2 + views,): total, regulariser, then each view's loss
        self.names = tuple(names)
        self._host: list[float] | None = None

    def _floats(self) -> list[float]:
        if self._host is None:
            self._host = self.values.tolist()
        return self._host

    @property
    def total(self) -> float:
        """Sum of the views' losses."""
        return self._floats()[0]

    @property
    def reg(self) -> float:
        """Sum of the views' attention regularisers."""
        return self._floats()[1]

    @property
    def views(self) -> dict[str, float]:
        """Each view's loss (BCE plus its regulariser)."""
        return dict(zip(self.names, self._floats()[2:]))


def training_step(
    model: PatchGuard,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext | None = None,
    schedule: AdvSchedule | None = None,
    bank: PerturbationBank | None = None,
) -> StepResult:
    """One optimisation step over the clean, pseudo and (optionally) attacked views.

    ``schedule`` is this step's attack budget (default: ``epsilon_train`` and ``steps_train``);
    ``bank`` holds the clean views' carried perturbations (``carry_perturbations``). Nothing
    here waits for the device: the losses stay on it (see :class:`StepResult`), and a
    non-finite loss is caught where the loop reads them, before anything is checkpointed.
    """
    if config.adv_train and config.train_attack == "free":
        return free_training_step(model, batch, optimizer, config, device, ctx, schedule, bank)
    clean = batch["image"].to(device, non_blocking=True)
    pseudo = batch["pseudo_image"].to(device, non_blocking=True)
    pseudo_targets = patch_targets(batch["pseudo_mask"].to(device, non_blocking=True),
                                   model.patch_size)
    clean_targets = torch.zeros_like(pseudo_targets)
    # bf16 autocast is meant for GPUs; on CPUs it runs (slower) and serves numerics checks.
    autocast_dtype = torch.bfloat16 if config.bf16 else None
    batch_size = clean.shape[0]

    views = {"clean": (clean, clean_targets), "pseudo": (pseudo, pseudo_targets)}
    if config.adv_train:
        schedule = schedule or AdvSchedule(config.epsilon_train / 255.0, config.steps_train)
        index = batch["index"] if bank is not None else None
        start = None
        if bank is not None:
            # Carried perturbations for the clean half, none for the fresh pseudo anomalies.
            start = torch.cat([bank.get(index), torch.zeros_like(pseudo)])
        adversarial = training_attack(model, torch.cat([clean, pseudo]),
                                      torch.cat([clean_targets, pseudo_targets]), config,
                                      schedule, autocast_dtype, start)
        views["adv_clean"] = (adversarial[:batch_size], clean_targets)
        views["adv_pseudo"] = (adversarial[batch_size:], pseudo_targets)
        if bank is not None:
            bank.put(index, views["adv_clean"][0], clean)
    names = [name for name in VIEW_NAMES if name in views]
    images = torch.cat([views[name][0] for name in names])
    targets = torch.cat([views[name][1] for name in names])
    total, values = views_loss(model, images, targets, names, batch_size, config, device,
                               autocast_dtype)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if ctx is not None:
        average_gradients([p for g in optimizer.param_groups for p in g["params"]], ctx)
    optimizer.step()
    return StepResult(values, _logged_names(names, config))


def _logged_names(names: Sequence[str], config: TrainConfig) -> list[str]:
    extra = (("trades", config.trades_weight), ("rank", config.rank_weight))
    return [*names, *(name for name, weight in extra if weight > 0)]


def training_attack(
    model: PatchGuard,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    schedule: AdvSchedule,
    autocast_dtype: torch.dtype | None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attacked images for training with ``config.train_attack`` (pgd, fgsm-rs, n-fgsm).

    One run over clean and pseudo images together (2B): the objective is a sum of per-image
    terms and the model treats images independently, so each image gets the perturbation a
    run of its own would give (dropout masks aside, drawn from the same distribution), with
    half the passes and larger matrix products. The model stays in train mode, so the attack
    sees the discriminator's dropout (faithful). The pgd default with the mask objective and
    no ``start`` is METHOD.md's attack, call for call.
    """
    objective = training_objective(config.train_objective, model)
    if config.train_attack == "pgd":
        return pgd_attack(model, images, targets, schedule.epsilon, schedule.steps,
                          objective=objective, autocast_dtype=autocast_dtype, start=start)
    if config.train_attack == "fgsm-rs":
        return fgsm_rs_attack(model, images, targets, schedule.epsilon, objective, start=start,
                              autocast_dtype=autocast_dtype)
    if config.train_attack == "n-fgsm":
        return nfgsm_attack(model, images, targets, schedule.epsilon, objective,
                            autocast_dtype=autocast_dtype)
    raise ValueError(f"train_attack {config.train_attack!r} has no separate attack step")


def views_loss(
    model: PatchGuard,
    images: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
    batch_size: int,
    config: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's total loss and its logged values (total, regulariser, each view's loss).

    One forward over all views: the per-view losses are exactly the per-view formula (each
    view is sliced out again), at the cost of one larger batch instead of four. With
    ``trades_weight`` the KL between each view's patch logits and its attacked twin's is added
    to the total (logged as its own value, after the views); with ``rank_weight`` the pairwise
    ranking loss of the top-k image scores of all views, normal (no anomalous patch) against
    anomalous, attacked or not (logged after that).
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_dtype is not None):
        output = model(images, with_attention=config.reg)
    total = torch.zeros((), device=device)
    losses: list[torch.Tensor] = []
    regs: list[torch.Tensor] = []
    for i in range(len(names)):
        part = slice(i * batch_size, (i + 1) * batch_size)
        loss = patch_bce_loss(output.logits[part], targets[part])
        if config.reg:
            reg = attention_kl_regularizer(
                [a[part] for a in output.attentions], config.reg_coefficients
            )
            regs.append(reg.detach())
            loss = loss + reg
        losses.append(loss.detach())
        total = total + loss
    if config.trades_weight > 0:
        logits = dict(zip(names, output.logits.split(batch_size)))
        trades = torch.zeros((), device=device)
        for plain, attacked in (("clean", "adv_clean"), ("pseudo", "adv_pseudo")):
            if plain in logits and attacked in logits:
                trades = trades + binary_kl(logits[plain], logits[attacked])
        total = total + config.trades_weight * trades
        losses.append(trades.detach())
    if config.rank_weight > 0:
        # The decision an attacker moves, trained directly: the attacked views' scores are
        # the worst case the training attack found (with the score objective).
        rank = pairwise_ranking_loss(model.image_score(output.logits.float()),
                                     anomalous_views(targets))
        total = total + config.rank_weight * rank
        losses.append(rank.detach())
    reg_total = torch.stack(regs).sum() if regs else torch.zeros((), device=device)
    return total, torch.stack([total.detach(), reg_total, *losses])


def free_training_step(
    model: PatchGuard,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext | None = None,
    schedule: AdvSchedule | None = None,
    bank: PerturbationBank | None = None,
) -> StepResult:
    """Free adversarial training (Shafahi et al. 2019): the batch is replayed ``free_replays``
    times; each replay's single backward pass gives both the weight gradients (one optimiser
    step) and the input gradient of the attacked views, from which their perturbations take a
    signed step of epsilon (projected to the ball). The perturbation of the clean views starts
    from the bank when perturbations are carried, else at zero, as the pseudo anomalies'."""
    clean = batch["image"].to(device, non_blocking=True)
    pseudo = batch["pseudo_image"].to(device, non_blocking=True)
    pseudo_targets = patch_targets(batch["pseudo_mask"].to(device, non_blocking=True),
                                   model.patch_size)
    clean_targets = torch.zeros_like(pseudo_targets)
    autocast_dtype = torch.bfloat16 if config.bf16 else None
    batch_size = clean.shape[0]
    eps = (schedule or AdvSchedule(config.epsilon_train / 255.0, config.steps_train)).epsilon
    originals = torch.cat([clean, pseudo])
    delta = torch.zeros_like(originals)
    if bank is not None:
        delta[:batch_size] = bank.get(batch["index"]).clamp(-eps, eps)
    names = list(VIEW_NAMES)
    targets = torch.cat([clean_targets, clean_targets, pseudo_targets, pseudo_targets])
    sums: torch.Tensor | None = None
    for _ in range(config.free_replays):
        attacked = (originals + delta).clamp(0.0, 1.0).requires_grad_(True)
        images = torch.cat([clean, attacked[:batch_size], pseudo, attacked[batch_size:]])
        total, values = views_loss(model, images, targets, names, batch_size, config, device,
                                   autocast_dtype)
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # the one backward: weight gradients and attacked.grad together
        if ctx is not None:
            average_gradients([p for g in optimizer.param_groups for p in g["params"]], ctx)
        optimizer.step()
        with torch.no_grad():
            delta = (delta + eps * attacked.grad.sign()).clamp(-eps, eps)
        sums = values if sums is None else sums + values
    if bank is not None:
        bank.put(batch["index"], (clean + delta[:batch_size]).clamp(0.0, 1.0), clean)
    return StepResult(sums / config.free_replays, _logged_names(names, config))


class LossMeter:
    """Per-epoch sums of the step losses, weighted by batch size, accumulated on the device.

    :meth:`read` is the only synchronisation: the training loop calls it once per logging
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


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) pairs in the order of :class:`GlobalBatchSampler` for the epoch set last.

    The epoch travels with each index, so one loader whose worker processes persist across
    epochs serves the whole run (a loader per epoch would start its workers again every epoch),
    and every sample is the same for any worker count.
    """

    def __init__(self, size: int, config: TrainConfig, ctx: DistContext) -> None:
        self.size, self.config, self.ctx = size, config, ctx
        self.epoch = 0
        self.local_batch = self._order().local_batch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and pseudo anomalies the next iteration yields."""
        self.epoch = epoch

    def _order(self) -> GlobalBatchSampler:
        return GlobalBatchSampler(self.size, self.config.batch_size, self.ctx, self.config.seed,
                                  self.epoch)

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in self._order())


def make_loader(
    dataset: TrainDataset, config: TrainConfig, epoch: int, ctx: DistContext | None = None
) -> DataLoader:
    """Shuffled loader whose order depends only on (seed, epoch); this rank's share of it.

    For a later epoch call ``loader.sampler.set_epoch(epoch)`` before iterating again: the
    worker processes persist across epochs.
    """
    ctx = ctx or DistContext()
    sampler = EpochSampler(len(dataset), config, ctx)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=resolve_device(config.device).type == "cuda",
        persistent_workers=config.workers > 0,
        # Its own generator: each new iterator draws a base seed from it, which would otherwise
        # come from (and advance) the global torch RNG that dropout uses, differently for a
        # fresh, a persistent and a resumed loader. Samples are seeded per (seed, epoch, index).
        generator=torch.Generator().manual_seed(config.seed),
        drop_last=False,
    )


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
    from ..evaluation.tracking import check_loggers

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
    config = prepare_run(config, state, resume, overwrite)
    if state is None:  # a recipe's robust backbone fine-tuning step, cached (robustify.py)
        from .robustify import robust_backbone_for

        config = robust_backbone_for(config, progress)
    if config.head == "knn":  # a memory bank, built in one pass: no optimiser, no epochs
        from .memory_bank import build_memory_bank

        return build_memory_bank(config, split_validation, validation_thresholds, progress)
    ctx = init_distributed(config.device)
    try:
        with cuda_speed_settings(resolve_device(config.device), config.tf32):
            return _train(config, state, resume, progress and ctx.is_main, ctx, loggers,
                          log_dir)
    finally:
        shutdown(ctx)


@contextmanager
def cuda_speed_settings(device: torch.device, tf32: bool = True) -> Iterator[None]:
    """On CUDA, TF32 matmuls and convolutions for fp32 (bf16 autocast is unaffected), restored
    afterwards; nothing on other devices.

    TF32 rounds matmul inputs to 10 mantissa bits: about 1e-3 relative per product, far below
    the run-to-run spread of training, but not bit-identical to fp32 (--no-tf32 turns it off).
    Evaluation outside training keeps full fp32.
    """
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _train(config: TrainConfig, state: dict | None, resume, progress: bool,
           ctx: DistContext, loggers: Sequence[str] = (),
           log_dir: str | Path | None = None) -> Path:
    from tqdm.auto import tqdm

    from ..evaluation.tracking import Trackers, open_trackers

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
        records = _foreground_records(records, config, device, progress)
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
                result = training_step(model, batch, optimizer, config, device, ctx, schedule,
                                       bank)
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


def _foreground_records(records: list, config: TrainConfig, device: torch.device,
                       progress: bool) -> list:
    """Say where foreground masks come from; generate them first when asked and missing."""
    from ..data.foreground import generate_foreground_masks, generated_info
    from ..data.layouts.folders import SPECS

    with_masks = [r.foreground_path for r in records if r.foreground_path is not None]
    if not with_masks and config.auto_foreground and config.dataset in SPECS:
        logger.info("%s has no published foreground masks: generating them (method auto)",
                    config.class_name)
        generate_foreground_masks(config.dataset, config.dataset_dir, config.class_name,
                                  method="auto", device=device, progress=progress)
        records = load_records(config.dataset, config.dataset_dir, config.class_name, "train")
        with_masks = [r.foreground_path for r in records if r.foreground_path is not None]
    if with_masks:
        info = generated_info(with_masks[0].parent)
        if info:
            logger.info("using foreground masks generated by patchguard (method %s, mean coverage "
                        "%.0f%%) from %s", info.get("method"), 100 * info.get("mean_coverage", 1),
                        with_masks[0].parent)
    return records


def probe_images(
    records: list, val_records: list, config: TrainConfig, generator: PseudoAnomalyGenerator,
    patch_size: int, device: torch.device,
) -> OverfittingProbe:
    """The overfitting probe on fixed images: the held-out normal images (else the first 8
    training images, then not held out) and two pseudo anomalies of each, drawn with a seed of
    their own."""
    chosen = val_records or records[:8]
    if not val_records:
        logger.warning("--probe-every without held-out images (--val-fraction 0): the probe "
                       "uses %d training images", len(chosen))
    probe_set = TrainDataset(chosen, config.image_size, generator, config.seed + 7919,
                             progress=False)
    samples = [probe_set[(epoch, i)] for epoch in (0, 1) for i in range(len(probe_set))]
    normal = torch.stack([s["image"] for s in samples[: len(probe_set)]]).to(device)
    pseudo = torch.stack([s["pseudo_image"] for s in samples]).to(device)
    masks = torch.stack([s["pseudo_mask"] for s in samples]).to(device)
    return OverfittingProbe(normal, pseudo, patch_targets(masks, patch_size),
                            config.epsilon_train / 255.0)


def split_validation(
    records: list, fraction: float, seed: int
) -> tuple[list, list]:
    """Hold out ``fraction`` of the training records (at least one when > 0), fixed by seed."""
    if fraction <= 0:
        return list(records), []
    count = max(1, round(len(records) * fraction))
    if count >= len(records):
        raise ValueError(f"val_fraction {fraction} leaves no training images of {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))
    held = set(order[:count].tolist())
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def validation_thresholds(
    model: PatchGuard, records: list, config: TrainConfig, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Score held-out normal images; return their scores and thresholds at the target FPR."""
    preds = predict_dataset(model, TestDataset(records, config.image_size), 0.0,
                            batch_size=config.batch_size, device=device, progress=progress,
                            desc="scoring held-out normal images")
    thresholds = calibrate_thresholds(preds.scores, target_fpr=config.target_fpr,
                                      normal_pixel_values=preds.maps.ravel(), method="auto")
    logger.info("thresholds from %d held-out normal images at FPR %.3g: image %.4f (%s)",
                len(records), config.target_fpr, thresholds["image"], thresholds["method"])
    return {"thresholds": thresholds,
            "normal_scores": torch.as_tensor(preds.scores, dtype=torch.float32)}
