import json

import pytest
import torch

from patchguard.config import TrainConfig
from patchguard.models.patchguard import PatchGuard
from patchguard.training import task
from patchguard.training import trainer as training
from patchguard.training.loader import make_loader
from patchguard.training.optim import build_optimizer, lr_factor
from patchguard.training.trainer import train
from patchguard.utils.checkpoint import load_checkpoint
from patchguard.utils.device import cuda_speed_settings

from helpers.models import tiny_config


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_training_writes_checkpoint_log_and_learns(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "run", epochs=3)
    last = train(config, progress=False)
    state = load_checkpoint(last)
    assert state["epoch"] == 3
    assert TrainConfig.from_dict(state["config"]) == config
    assert {"model", "optimizer", "scheduler", "rng", "weight_source"} <= set(state)
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"clean", "adv_clean", "pseudo", "adv_pseudo", "reg", "images_per_s"} <= set(log[0])
    assert log[-1]["clean"] < log[0]["clean"]
    # periodic checkpoints only in the second half (save_every=1 here)
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch_*.pt")) == [
        "epoch_0002.pt", "epoch_0003.pt"]


def test_no_adv_and_no_reg_switch_views_off(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, epochs=1, adv_train=False, reg=False)
    train(config, progress=False)
    record = json.loads((tmp_path / "train_log.jsonl").read_text())
    assert "adv_clean" not in record and record["reg"] == 0.0


def test_training_step_leaves_only_optimizer_updates(tiny_data, tmp_path, monkeypatch):
    """The attack must not leak gradients into the optimiser step (input gradients only)."""
    calls = []
    real = task.pgd_attack

    def spy(model, *args, **kwargs):
        before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        out = real(model, *args, **kwargs)
        after = [p.grad for p in model.parameters()]
        calls.append(all((b is None and a is None) or (b is not None and torch.equal(a, b))
                         for a, b in zip(after, before)))
        return out

    monkeypatch.setattr(task, "pgd_attack", spy)
    train(tiny_config(tiny_data, tmp_path, epochs=1), progress=False)
    assert calls and all(calls)


@pytest.mark.slow
@pytest.mark.parametrize("every_min, workers", [(10, 0), (0, 2)])
def test_resume_after_interrupt_is_exact(tiny_data, tmp_path, monkeypatch, every_min, workers):
    """Ctrl-C mid-epoch, resume: the same weights as a run never stopped, bit for bit; with the
    time policy (epoch 1 reaches last.pt only when the interrupt comes) and with a write every
    epoch and persistent loader workers."""
    settings = dict(epochs=3, checkpoint_every_min=every_min, workers=workers)
    straight = train(tiny_config(tiny_data, tmp_path / "a", **settings), progress=False)

    real_step = task.TrainingTask.step
    count = {"n": 0}

    def interrupting_step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 4:  # second batch of epoch 2 (2 batches per epoch)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    config = tiny_config(tiny_data, tmp_path / "b", **settings)
    monkeypatch.setattr(task.TrainingTask, "step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(task.TrainingTask, "step", real_step)
    resumed = train(config, resume=tmp_path / "b" / "last.pt", progress=False)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_validation_split_sets_thresholds(tiny_data, tmp_path):
    last = train(tiny_config(tiny_data, tmp_path, epochs=1, val_fraction=0.25), progress=False)
    state = load_checkpoint(last)
    assert state["train_summary"]["n_train_images"] == 6
    assert state["train_summary"]["n_validation_images"] == 2
    scores = state["normal_scores"]
    assert scores.shape == (2,)
    thresholds = state["thresholds"]
    # at a 1% target FPR on two held-out images, both must fall below the image threshold
    assert thresholds["image"] > float(scores.max()) and thresholds["pixel"] is not None


def test_backbone_lr_groups_and_cosine_schedule():
    config = TrainConfig(backbone="test_vit", image_size=64, pretrained=False, lr=1e-3,
                         backbone_lr=1e-5, epochs=4, feature_layers=[2], reg_layers=[2],
                         reg_coefficients=[0.01])
    model = PatchGuard.from_config(config)
    optimizer = build_optimizer(model, config)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 1e-3]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.01]
    factors = [lr_factor(step, 2, config) for step in range(8)]
    assert factors[0] == factors[1] == 1.0  # constant within an epoch
    assert factors[-1] > 0.0125 and factors == sorted(factors, reverse=True)
    assert lr_factor(10**6, 2, config) == pytest.approx(0.0125)


def test_warmup_is_linear():
    config = TrainConfig(warmup_epochs=1, epochs=3)
    assert [lr_factor(s, 4, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_auto_foreground_generates_masks_and_training_uses_them(tmp_path, monkeypatch, caplog):
    import logging

    from patchguard.data import foreground
    from patchguard.data.foreground import generate

    from helpers.data import make_mvtec_class

    # The real DINOv2 model is too big for a unit test: the threshold method stands in for it.
    monkeypatch.setattr(generate, "auto_masks", lambda images, *a, **k: (
        "threshold", foreground.threshold_masks(list(images))))
    make_mvtec_class(tmp_path / "data", foreground=False)
    caplog.set_level(logging.INFO, logger="patchguard")
    last = train(tiny_config(tmp_path / "data", tmp_path / "run", epochs=1,
                             auto_foreground=True), progress=False)
    fg_dir = tmp_path / "data" / "widget" / "train" / "foreground_mask"
    assert len(list(fg_dir.glob("*.png"))) == 8
    assert foreground.generated_info(fg_dir)["method"] == "threshold"
    assert load_checkpoint(last)["train_summary"]["foreground_masks"] == 8
    assert "generated by patchguard" in caplog.text


def test_merged_attack_equals_separate_attacks_without_dropout():
    """One PGD run over two stacked batches gives each batch its own run's result."""
    from patchguard.adversarial.training_attacks import pgd_attack

    from helpers.models import TINY_SIZE, tiny_model

    model = tiny_model(dsc_dropout=0.0).train()
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, TINY_SIZE, TINY_SIZE), torch.rand(3, 3, TINY_SIZE, TINY_SIZE)
    ta, tb = torch.zeros(2, 16), (torch.rand(3, 16) > 0.7).float()
    merged = pgd_attack(model, torch.cat([a, b]), torch.cat([ta, tb]), 8 / 255, 3)
    separate = torch.cat([pgd_attack(model, a, ta, 8 / 255, 3),
                          pgd_attack(model, b, tb, 8 / 255, 3)])
    # Equal up to sign flips of float-noise-sized gradient components.
    assert (merged - separate).abs().gt(1e-6).float().mean() < 1e-3


def test_step_result_reads_the_device_losses_once():
    values = torch.tensor([3.0, 0.5, 1.0, 2.0])
    result = task.StepResult(values, ["clean", "pseudo"])
    assert (result.total, result.reg, result.views) == (3.0, 0.5, {"clean": 1.0, "pseudo": 2.0})
    values.fill_(0)  # the first read is kept: later reads do not touch the device again
    assert result.total == 3.0
    meter = training.LossMeter()
    meter.add(task.StepResult(torch.tensor([3.0, 0.5, 1.0, 2.0]), ["clean", "pseudo"]), 4)
    meter.add(task.StepResult(torch.tensor([1.0, 0.0, 0.5, 0.5]), ["clean", "pseudo"]), 2)
    assert meter.seen == 6
    assert meter.totals() == {"loss": 14.0, "reg": 2.0, "clean": 5.0, "pseudo": 9.0}
    meter.add(task.StepResult(torch.tensor([float("inf"), 0, 0, 0]), ["clean", "pseudo"]), 1)
    with pytest.raises(FloatingPointError):
        meter.totals()



def test_persistent_loader_gives_each_epochs_order_and_pseudo_anomalies(tiny_data):
    """One loader with persistent workers yields, per epoch, that epoch's samples."""
    from patchguard.data.datasets import TrainDataset
    from patchguard.data.layouts import load_records
    from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator
    from patchguard.training.distributed import DistContext, GlobalBatchSampler

    records = load_records("mvtec", tiny_data, "widget", "train")
    dataset = TrainDataset(records, 64, PseudoAnomalyGenerator(4), seed=5)
    config = TrainConfig(batch_size=3, workers=2, seed=5, device="cpu")
    loader = make_loader(dataset, config, 0)
    rng_before = torch.get_rng_state()
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        got = list(loader)
        # Reference: the epoch's permutation, samples drawn in this process after set_epoch.
        order = list(GlobalBatchSampler(len(dataset), 3, DistContext(), 5, epoch))
        dataset.set_epoch(epoch)
        expected = torch.stack([dataset[i]["pseudo_image"] for i in order])
        assert torch.cat([b["index"] for b in got]).tolist() == order
        assert torch.equal(torch.cat([b["pseudo_image"] for b in got]), expected)
    # The loader leaves the global RNG (dropout's) alone, however many iterators it starts.
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.slow
def test_training_is_identical_for_any_worker_count(tiny_data, tmp_path):
    runs = [train(tiny_config(tiny_data, tmp_path / str(w), epochs=2, workers=w), progress=False)
            for w in (0, 2)]
    a, b = _weights(runs[0]), _weights(runs[1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("every_min", [0, 10])
def test_non_finite_loss_stops_training_before_a_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                           every_min):
    real = task.patch_bce_loss
    calls = {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls["n"] > 8 else loss  # from epoch 2 (4 views x 2)

    monkeypatch.setattr(task, "patch_bce_loss", poisoned)
    config = tiny_config(tiny_data, tmp_path, epochs=3, checkpoint_every_min=every_min)
    with pytest.raises(FloatingPointError, match="not finite"):
        train(config, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_policy_writes_on_time_final_epoch_and_flush(tmp_path):
    from patchguard.training.run_state import CheckpointPolicy

    now = [0.0]
    policy = CheckpointPolicy(tmp_path / "last.pt", every_min=10, clock=lambda: now[0])
    weights = torch.zeros(3)

    def payload(epoch):
        return {"model": {"w": weights}, "config": {}, "epoch": epoch}

    assert not policy.epoch_done(payload(1))  # 0 min since the start: kept in memory
    assert not (tmp_path / "last.pt").exists() and policy.pending is not None
    weights.add_(1)  # later steps change the live tensors, not the snapshot
    now[0] = 599.0
    assert not policy.epoch_done(payload(2))
    weights.add_(1)
    assert policy.flush() == 2 and policy.pending is None and policy.flush() is None
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].tolist() == [1.0] * 3
    now[0] = 1199.0 + 1
    assert policy.epoch_done(payload(3))  # 10 minutes after the flush
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert policy.epoch_done(payload(4), final=True)
    assert policy.epoch_done(payload(5), periodic=tmp_path / "epoch_0005.pt")
    assert policy.saved_epoch == 5 and policy.writes == 4
    every_epoch = CheckpointPolicy(tmp_path / "b.pt", every_min=0, clock=lambda: now[0])
    assert every_epoch.epoch_done(payload(1))


def test_periodic_file_and_last_pt_stay_independent(tmp_path):
    from patchguard.training.run_state import CheckpointPolicy

    policy = CheckpointPolicy(tmp_path / "last.pt", every_min=10)
    policy.epoch_done({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 4},
                      periodic=tmp_path / "epoch_0004.pt")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
    policy.epoch_done({"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 5}, final=True)
    assert load_checkpoint(tmp_path / "epoch_0004.pt")["model"]["w"].tolist() == [1.0, 1.0]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("every_min, writes", [(10, 1), (0, 3)])
def test_last_pt_written_on_the_time_policy(tiny_data, tmp_path, monkeypatch, every_min, writes):
    from patchguard.training import run_state as checkpoints

    written = []
    real = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda path, payload: (
        written.append(payload["epoch"]), real(path, payload))[1])
    train(tiny_config(tiny_data, tmp_path, epochs=3, save_every=0, checkpoint_every_min=every_min),
          progress=False)
    assert written == ([3] if writes == 1 else [1, 2, 3])


def test_sigterm_leaves_the_last_completed_epoch_like_ctrl_c(tiny_data, tmp_path, monkeypatch):
    import os
    import signal

    real_step = task.TrainingTask.step
    count = {"n": 0}

    def terminated_step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 3:  # first batch of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(task.TrainingTask, "step", terminated_step)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, tmp_path, epochs=3), progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


@pytest.mark.parametrize("start, tf32", [((False, False), True), ((True, True), False),
                                         ((False, True), True)])
def test_cuda_speed_settings_touch_nothing_on_a_cpu(monkeypatch, start, tf32):
    """From known TF32 flags, each the opposite of what ``tf32`` would set on CUDA: on a CPU
    they stay as they were, inside the block and after it."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", start[0])
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", start[1])

    def flags():
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    with cuda_speed_settings(torch.device("cpu"), tf32=tf32):
        assert flags() == start
    assert flags() == start


@pytest.mark.gpu
def test_cuda_speed_settings_turn_tf32_on_and_restore():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with cuda_speed_settings(torch.device("cuda"), tf32=True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
