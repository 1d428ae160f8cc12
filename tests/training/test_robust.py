"""The training options for robustness at small budgets: each training attack against its
definition (on a linear toy model whose input gradient is known in closed form), free
adversarial training's replays
and shared backward, the epsilon ramp, carried perturbations, config checks, and the
catastrophic-overfitting probe on an induced collapse."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchguard.adversarial.training_attacks import fgsm_rs_attack, nfgsm_attack, pgd_attack
from patchguard.config import TrainConfig
from patchguard.data.datasets import TrainDataset
from patchguard.data.layouts import load_records
from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator
from patchguard.models.patchguard import PatchGuard, patch_targets
from patchguard.training.loader import make_loader
from patchguard.training.losses import (
    attention_kl_regularizer,
    pairwise_ranking_loss,
    patch_bce_loss,
)
from patchguard.training.optim import build_optimizer
from patchguard.training.probe import OverfittingProbe
from patchguard.training.robust import PerturbationBank, adv_schedule
from patchguard.training.task import training_step
from patchguard.training.trainer import train
from patchguard.utils.checkpoint import load_checkpoint
from patchguard.utils.checks import InputError

from helpers.models import tiny_config

EPS = 8 / 255


class PatchLinear(nn.Module):
    """Toy detector on 16 x 16 images with 2 x 2 patches of 8 px: a patch's logit is
    ``brightness * (patch mean - 0.5) + gain * sum(w * x)`` over the patch's pixels. With gain 0
    an eps-bounded attack barely moves it; with a large gain it is easily broken. Its input
    gradient's sign is sign(w) wherever the objective raises every logit."""

    patch_size = 8
    top_k = 1

    def __init__(self, gain: float = 0.0, brightness: float = 20.0,
                 highpass: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1)))
        self.gain, self.brightness, self.highpass = gain, brightness, highpass

    def forward(self, x: torch.Tensor, with_attention: bool = False) -> SimpleNamespace:
        def per_patch(values: torch.Tensor) -> torch.Tensor:  # (B, 3, 16, 16) -> (B, 4)
            return values.unfold(2, 8, 8).unfold(3, 8, 8).sum(dim=(1, 4, 5)).flatten(1)

        mean = per_patch(x) / (3 * 64)
        wiggle = x
        if self.highpass:  # only deviations from the patch mean: nothing on flat patches
            wiggle = x - F.avg_pool2d(x, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)
        logits = self.brightness * (mean - 0.5) + self.gain * per_patch(wiggle * self.w)
        return SimpleNamespace(logits=logits, attentions=[])

    def image_score(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.topk(self.top_k, dim=-1).values.mean(dim=-1)


def _normal_images(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images = 0.5 + 0.05 * torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    return images, torch.zeros(n, 4)  # normal: the mask objective raises every logit


def _noise(shape, radius: float, seed: int) -> torch.Tensor:
    return (2 * torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 1) * radius


def test_fgsm_rs_is_a_random_start_and_one_step_of_1_25_eps_inside_the_ball():
    model = PatchLinear(gain=1.0, brightness=0.0)
    images, targets = _normal_images()
    adversarial = fgsm_rs_attack(model, images, targets, EPS,
                                 generator=torch.Generator().manual_seed(5))
    expected = images + (_noise(images.shape, EPS, 5) + 1.25 * EPS * model.w.sign()).clamp(
        -EPS, EPS)
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-6)
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert model.w.grad is None  # input gradients only


def test_nfgsm_is_2_eps_noise_plus_an_eps_step_without_projection():
    model = PatchLinear(gain=1.0, brightness=0.0)
    images, targets = _normal_images()
    adversarial = nfgsm_attack(model, images, targets, EPS,
                               generator=torch.Generator().manual_seed(6))
    expected = images + _noise(images.shape, 2 * EPS, 6) + EPS * model.w.sign()
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-6)
    delta = (adversarial - images).abs()
    assert delta.max() <= 3 * EPS + 1e-6
    assert delta.max() > 2.5 * EPS  # not projected back to the eps ball


def test_pgd_from_a_carried_start_continues_from_it():
    model = PatchLinear(gain=1.0, brightness=0.0)
    images, targets = _normal_images()
    start = _noise(images.shape, EPS, 7)
    steps, alpha = 2, 2.5 * EPS / 2
    delta = start.clone()
    for _ in range(steps):  # the plain loop: constant gradient sign on the linear model
        delta = (delta + alpha * model.w.sign()).clamp(-EPS, EPS)
    adversarial = pgd_attack(model, images, targets, EPS, steps, start=start)
    torch.testing.assert_close(adversarial, images + delta, rtol=0, atol=1e-6)
    # without a start: the faithful run from the clean image
    faithful = pgd_attack(model, images, targets, EPS, steps)
    torch.testing.assert_close(faithful, images + (2 * alpha * model.w.sign()).clamp(-EPS, EPS),
                               rtol=0, atol=1e-6)


def test_epsilon_ramp_and_late_steps():
    config = SimpleNamespace(epsilon_train=8.0, steps_train=3, eps_ramp=0.5,
                             late_steps_train=7, late_fraction=0.25)
    total = 100
    got = [adv_schedule(config, step, total) for step in range(total)]
    for step, schedule in enumerate(got):
        ramp = min(1.0, (step + 1) / 50) if step < 50 else 1.0
        assert schedule.epsilon == pytest.approx(8 / 255 * ramp)
        assert schedule.steps == (7 if step >= 75 else 3)
    paper = SimpleNamespace(epsilon_train=8.0, steps_train=10, eps_ramp=0.0,
                            late_steps_train=0, late_fraction=0.25)
    assert {adv_schedule(paper, s, total) for s in range(total)} == {
        adv_schedule(paper, 0, total)}
    assert adv_schedule(paper, 0, total).epsilon == 8 / 255


@pytest.fixture
def free_setup(tiny_data, tmp_path):
    def make(replays: int):
        config = tiny_config(tiny_data, tmp_path, train_attack="free", free_replays=replays,
                             dsc_dropout=0.0, carry_perturbations=True)
        torch.manual_seed(0)
        model = PatchGuard.from_config(config).train()
        records = load_records("mvtec", tiny_data, "widget", "train")
        dataset = TrainDataset(records, config.image_size, PseudoAnomalyGenerator(4),
                               config.seed, progress=False)
        batch = next(iter(make_loader(dataset, config, 0)))
        return config, model, batch, len(dataset)
    return make


@pytest.mark.parametrize("replays", [1, 3])
def test_free_replays_one_backward_and_one_step_each(free_setup, replays):
    config, model, batch, n = free_setup(replays)
    optimizer = build_optimizer(model, config)
    backwards, steps = [], []
    first = next(model.parameters())
    first.register_hook(lambda grad: backwards.append(1))
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    bank = PerturbationBank(n, (3, config.image_size, config.image_size), torch.device("cpu"))
    training_step(model, batch, optimizer, config, torch.device("cpu"), bank=bank)
    assert len(backwards) == replays and len(steps) == replays
    delta = bank.get(batch["index"])
    assert delta.abs().max() <= EPS + 1e-6
    assert delta.abs().max() > 0.9 * EPS


def test_free_perturbation_comes_from_the_training_loss_backward(free_setup):
    """With one replay from zero, the stored perturbation is eps * sign of the gradient of the
    attacked clean view's training loss (BCE + regulariser), computed here separately on a copy
    of the model before its update."""
    config, model, batch, n = free_setup(1)
    torch.manual_seed(0)  # the same initial weights (a deepcopy would lose the capture hooks)
    reference = PatchGuard.from_config(config).train()
    clean = batch["image"].clone().requires_grad_(True)
    output = reference(clean, with_attention=True)
    targets = torch.zeros_like(patch_targets(batch["pseudo_mask"], reference.patch_size))
    loss = patch_bce_loss(output.logits, targets) + attention_kl_regularizer(
        output.attentions, config.reg_coefficients)
    (grad,) = torch.autograd.grad(loss, clean)
    bank = PerturbationBank(n, (3, config.image_size, config.image_size), torch.device("cpu"))
    training_step(model, batch, build_optimizer(model, config), config,
                  torch.device("cpu"), bank=bank)
    delta = bank.get(batch["index"])
    inside = (batch["image"] > EPS) & (batch["image"] < 1 - EPS) & (grad.abs() > 1e-9)
    assert inside.sum() > 100
    torch.testing.assert_close(delta[inside], EPS * grad.sign()[inside], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["pgd", "fgsm-rs", "n-fgsm", "free"])
def test_every_training_attack_trains_and_logs(tiny_data, tmp_path, attack):
    extra = {"carry_perturbations": attack != "n-fgsm", "eps_ramp": 0.9, "trades_weight": 0.5,
             "rank_weight": 2.0}
    if attack != "free":
        extra["train_objective"] = "score"
    config = tiny_config(tiny_data, tmp_path, epochs=2, train_attack=attack, free_replays=2,
                         frozen_blocks=1, probe_every=1, val_fraction=0.25, **extra)
    train(config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").open()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert {"adv_clean", "trades", "rank", "cpu_seconds", "probe_pgd", "probe_fgsm",
                "probe_gap"} <= set(record)
        assert 0.0 < record["rank"] < 50.0
    assert log[0]["epsilon_train"] < 7.5 and log[1]["epsilon_train"] == pytest.approx(8.0)


def test_frozen_blocks_stay_unchanged(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, epochs=1, frozen_blocks=2)
    torch.manual_seed(0)
    before = PatchGuard.from_config(config).state_dict()
    state = load_checkpoint(train(config, progress=False))["model"]
    frozen = [k for k in before if ".blocks.0." in k or ".blocks.1." in k or "patch_embed" in k]
    trained = [k for k in before if ".blocks.2." in k and k.endswith("weight")]
    assert frozen and all(torch.equal(before[k], state[k]) for k in frozen)
    assert any(not torch.equal(before[k], state[k]) for k in trained)


@pytest.mark.parametrize("values, key", [
    ({"train_attack": "free", "train_objective": "score"}, "train_objective"),
    ({"train_attack": "n-fgsm", "carry_perturbations": True}, "carry_perturbations"),
    ({"train_attack": "fgsm"}, "train_attack"),
    ({"eps_ramp": 1.0}, "eps_ramp"),
    ({"free_replays": 0}, "free_replays"),
])
def test_config_refuses_inconsistent_options(values, key):
    with pytest.raises(InputError, match=key):
        TrainConfig(**values)


def test_ranking_loss_is_the_mean_pairwise_softplus_of_a_plain_loop():
    torch.manual_seed(0)
    scores = torch.randn(9) * 3
    anomalous = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    pairs = [math.log1p(math.exp(float(scores[i] - scores[j])))
             for i in range(9) for j in range(9) if not anomalous[i] and anomalous[j]]
    assert pairwise_ranking_loss(scores, anomalous).item() == pytest.approx(
        sum(pairs) / len(pairs), rel=1e-6)
    # perfectly ranked scores far apart cost almost nothing, reversed ones their distance
    far = torch.where(anomalous, 20.0, -20.0)
    assert pairwise_ranking_loss(far, anomalous).item() < 1e-15
    assert pairwise_ranking_loss(-far, anomalous).item() == pytest.approx(40.0, rel=1e-6)
    single = pairwise_ranking_loss(scores.requires_grad_(), torch.zeros(9, dtype=torch.bool))
    assert single.item() == 0.0 and single.requires_grad


def test_paper_defaults_are_the_faithful_attack():
    config = TrainConfig()
    assert (config.train_attack, config.train_objective, config.eps_ramp, config.trades_weight,
            config.late_steps_train, config.frozen_blocks, config.carry_perturbations,
            config.probe_every) == ("pgd", "mask", 0.0, 0.0, 0, 0, False, 0)


def _probe_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    normal, _ = _normal_images(4)
    pseudo = normal.clone()
    pseudo[:, :, :8, :8] = 0.9  # one bright patch, the pseudo anomaly
    targets = torch.zeros(4, 4)
    targets[:, 0] = 1
    return normal, pseudo, targets


def test_probe_flags_a_collapse_while_the_loss_falls(caplog):
    probe = OverfittingProbe(*_probe_images(), epsilon=EPS)
    robust, broken = PatchLinear(gain=0.0, highpass=True), PatchLinear(gain=5.0, highpass=True)
    first = probe.check(robust, epoch=1, loss=1.0)
    assert first["probe_clean"] == first["probe_pgd"] == 1.0
    assert "catastrophic_overfitting" not in first
    with caplog.at_level(logging.WARNING, logger="patchguard.training.probe"):
        second = probe.check(broken, epoch=2, loss=0.5)
    assert second["probe_clean"] == 1.0 and second["probe_pgd"] <= 0.2
    assert second["catastrophic_overfitting"] is True
    assert "catastrophic overfitting" in caplog.text


def test_probe_does_not_flag_a_model_that_was_never_robust_or_a_rising_loss():
    never = OverfittingProbe(*_probe_images(), epsilon=EPS)
    for epoch, loss in ((1, 1.0), (2, 0.5)):
        record = never.check(PatchLinear(gain=5.0, highpass=True), epoch=epoch, loss=loss)
        assert "catastrophic_overfitting" not in record
    rising = OverfittingProbe(*_probe_images(), epsilon=EPS)
    rising.check(PatchLinear(gain=0.0, highpass=True), epoch=1, loss=1.0)
    record = rising.check(PatchLinear(gain=5.0, highpass=True), 2, loss=1.5)
    assert record["probe_pgd"] <= 0.2 and "catastrophic_overfitting" not in record


def test_probe_warns_about_fgsm_only_robustness(monkeypatch, caplog):
    probe = OverfittingProbe(*_probe_images(), epsilon=EPS)
    monkeypatch.setattr(probe, "measure", lambda model: {
        "probe_clean": 0.9, "probe_fgsm": 0.6, "probe_pgd": 0.1})
    with caplog.at_level(logging.WARNING, logger="patchguard.training.probe"):
        record = probe.check(None, epoch=1, loss=1.0)
    assert record["probe_gap"] == pytest.approx(0.5) and record["fgsm_only_robustness"]
    assert "one-step attack only" in caplog.text


def test_robust_preset_trains_and_paper_stays_the_faithful_default(tiny_data, tmp_path):
    from patchguard.config import build_config

    assert build_config("paper").to_dict() == TrainConfig().to_dict()
    tiny = tiny_config(tiny_data, tmp_path, epochs=1).to_dict()
    keep = {k: tiny[k] for k in ("dataset", "dataset_dir", "class_name", "output_dir",
                                 "backbone", "pretrained", "dsc_hidden", "workers", "device")}
    config = build_config("robust-advtrain", None, {**keep, "image_size": 64, "feature_layers": [3],
                                           "reg_layers": [2, 3], "reg_coefficients": [0.01, 0.05],
                                           "epochs": 1})
    assert (config.train_objective, config.frozen_blocks, config.eps_ramp) == ("score", 2, 0.3)
    train(config, progress=False)
    assert "adv_clean" in json.loads((tmp_path / "train_log.jsonl").read_text())


def test_a_checkpoint_of_the_old_robust_preset_keeps_its_recipe(tiny_data, tmp_path):
    """"robust" named the adversarially trained discriminator until issue 21 and now names the
    kNN recipe; a checkpoint written then, by a version that knew no head or robustify keys,
    still loads and resumes as what it was: its stored config decides, not the preset name."""
    from patchguard.config import PRESETS, build_config
    from patchguard.models.factory import load_model
    from patchguard.training.run_state import resume_config
    from patchguard.utils.checkpoint import save_checkpoint

    assert PRESETS["robust"] == PRESETS["robust-features"]
    assert (PRESETS["robust"]["head"], PRESETS["robust"]["robustify_epsilon"]) == ("knn", 4.0)
    assert "head" not in PRESETS["robust-advtrain"]
    tiny = tiny_config(tiny_data, tmp_path, epochs=1).to_dict()
    keep = {k: tiny[k] for k in ("dataset", "dataset_dir", "class_name", "output_dir",
                                 "backbone", "pretrained", "dsc_hidden", "workers", "device")}
    config = build_config("robust-advtrain", None, {
        **keep, "image_size": 64, "feature_layers": [3], "reg_layers": [2, 3],
        "reg_coefficients": [0.01, 0.05], "epochs": 1, "steps_train": 1})
    train(config, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    old = {k: v for k, v in state["config"].items()
           if k != "head" and not k.startswith("robustify") and k != "backbone_weights"}
    state["config"] = {**old, "preset": "robust"}
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in state.items()
                                          if k != "format_version"})
    model, loaded = load_model(tmp_path / "old.pt")
    assert isinstance(model, PatchGuard) and loaded["config"]["preset"] == "robust"
    resumed = resume_config(tmp_path / "old.pt", {"epochs": 2})
    assert resumed.head == "discriminator" and resumed.robustify_epsilon in (None, 0, 0.0)
    assert (resumed.train_objective, resumed.frozen_blocks, resumed.eps_ramp) == ("score", 2,
                                                                                    0.3)
