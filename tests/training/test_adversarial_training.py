"""The adversarial-training core of docs/method.md, sections 3 and 4, checked from the outside.

A units bug (epsilon not divided by 255, or divided twice), an attack run in eval mode, or
attacked views without the attention regulariser must fail here. Every check looks at what the
network is fed and what it returns (hooks on PatchGuard.forward) and recomputes the loss with
formulas written out below, not with patchguard's loss functions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from patchguard.data.datasets import TrainDataset
from patchguard.data.layouts import load_records
from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator
from patchguard.models.patchguard import PatchGuard
from patchguard.training.loader import make_loader
from patchguard.training.optim import build_optimizer
from patchguard.training.task import training_step

from helpers.models import tiny_config

EPSILON_TRAIN, STEPS_TRAIN = 8.0, 3  # 8/255; three steps of 2.5 * eps / 3 reach the boundary
COEFFICIENTS = [0.5, 2.0]  # large, so that a missing regulariser is far outside float noise


class _Calls:
    """Every PatchGuard forward: mode, input, whether it is an attack step, and its output."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def hook_into(self, model: PatchGuard) -> None:
        def before(module, args, kwargs):
            images = args[0]
            self.records.append({"training": module.training, "images": images.detach().clone(),
                                 "attack": images.requires_grad,
                                 "with_attention": kwargs.get("with_attention", True)})

        def after(module, args, kwargs, output):
            self.records[-1]["output"] = output

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)

    @property
    def training_forward(self) -> dict:
        """The one forward the loss is computed on (no input gradient)."""
        (record,) = [r for r in self.records if not r["attack"]]
        return record


@pytest.fixture
def step(tiny_data, tmp_path):
    """One training step of a tiny model with adversarial training and the regulariser on."""
    config = tiny_config(tiny_data, tmp_path, epsilon_train=EPSILON_TRAIN,
                         steps_train=STEPS_TRAIN, reg_coefficients=COEFFICIENTS, dsc_dropout=0.2)
    torch.manual_seed(0)
    model = PatchGuard.from_config(config).train()
    records = load_records("mvtec", tiny_data, "widget", "train")
    dataset = TrainDataset(records, config.image_size, PseudoAnomalyGenerator(4), config.seed,
                           progress=False)
    batch = next(iter(make_loader(dataset, config, 0)))
    calls = _Calls()
    calls.hook_into(model)
    result = training_step(model, batch, build_optimizer(model, config), config,
                           torch.device("cpu"))
    return config, model, batch, calls, result


def _views(batch: dict, images: torch.Tensor) -> dict[str, slice]:
    """Which slice of the training forward's input is which view, told apart by their pixels."""
    n = batch["image"].shape[0]
    clean, pseudo = batch["image"], batch["pseudo_image"]
    eps = EPSILON_TRAIN / 255
    found: dict[str, slice] = {}
    for start in range(0, images.shape[0], n):
        part = slice(start, start + n)
        chunk = images[part]
        to_clean = (chunk - clean).abs().max().item()
        to_pseudo = (chunk - pseudo).abs().max().item()
        if to_clean == 0:
            found["clean"] = part
        elif to_pseudo == 0:
            found["pseudo"] = part
        elif to_clean <= eps + 1e-6:
            found["adv_clean"] = part
        elif to_pseudo <= eps + 1e-6:
            found["adv_pseudo"] = part
        else:
            raise AssertionError(f"slice {part} is no view of the batch: max |x - clean| "
                                 f"{to_clean:.4f}, max |x - pseudo| {to_pseudo:.4f}")
    return found


def test_training_attack_runs_in_train_mode(step):
    """The model stays in train mode, so the attack sees the dropout (docs/method.md, section 3)."""
    _, model, _, calls, _ = step
    attack_calls = [r for r in calls.records if r["attack"]]
    # Two views attacked for STEPS_TRAIN steps each (one call per step, or both views per call).
    assert len(attack_calls) in (STEPS_TRAIN, 2 * STEPS_TRAIN)
    assert all(r["training"] for r in attack_calls)
    assert calls.training_forward["training"] and model.training
    assert not any(r["with_attention"] for r in attack_calls)  # the attack needs no attention


def test_epsilon_train_is_in_1_255_units_on_its_way_to_the_attack(step):
    """--epsilon-train 8 perturbs by at most 8/255, and (3 steps of 2.5 eps / 3) reaches it."""
    _, _, batch, calls, _ = step
    images = calls.training_forward["images"]
    views = _views(batch, images)
    assert set(views) == {"clean", "adv_clean", "pseudo", "adv_pseudo"}
    eps = EPSILON_TRAIN / 255
    for name, source in (("adv_clean", batch["image"]), ("adv_pseudo", batch["pseudo_image"])):
        delta = (images[views[name]] - source).abs()
        assert delta.max().item() == pytest.approx(eps, abs=1e-6), name
        # Most pixels sit on the boundary (signed steps larger than eps), not just one.
        assert (delta > eps - 1e-6).float().mean() > 0.5, name
        assert images[views[name]].min() >= 0 and images[views[name]].max() <= 1


def _bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-patch binary cross-entropy, summed over patches, averaged over images."""
    per_patch = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    return per_patch.sum(dim=1).mean()


def _kl_to_uniform(attention: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of U * (log U - log(A + 1e-8)), U = 1/N (docs/method.md, 3)."""
    n = attention.shape[-1]
    return ((1 / n) * (math.log(1 / n) - torch.log(attention + 1e-8))).mean()


def test_every_view_carries_its_bce_and_the_attention_regulariser(step):
    """Each of the four views' loss is BCE + sum_i c_i KL(A_i || U) of that view's own forward."""
    config, _, batch, calls, result = step
    record = calls.training_forward
    assert record["with_attention"]
    views = _views(batch, record["images"])
    output = record["output"]
    pseudo_targets = F.max_pool2d((batch["pseudo_mask"] > 0).float(), 16).flatten(1)
    targets = {"clean": torch.zeros_like(pseudo_targets), "pseudo": pseudo_targets}
    targets["adv_clean"], targets["adv_pseudo"] = targets["clean"], targets["pseudo"]
    assert pseudo_targets.sum() > 0  # the pseudo view really has anomalous patches
    total = 0.0
    for name, part in views.items():
        logits = output.logits[part].detach()
        reg = sum(c * _kl_to_uniform(a[part].detach())
                  for c, a in zip(config.reg_coefficients, output.attentions))
        expected = (_bce(logits, targets[name]) + reg).item()
        assert reg.item() > 1e-3  # large enough that dropping it could not pass
        assert result.views[name] == pytest.approx(expected, rel=1e-5, abs=1e-6), name
        total += expected
    assert result.total == pytest.approx(total, rel=1e-5)
