"""evaluate_detector: any differentiable detector under the same attacks.

The references are independent: sklearn's AUROCs of the clean images and of PGD images made by
a plain loop written here (signed gradient steps of 2.5 eps / steps from the clean image,
clipped to the eps ball and to [0, 1], the last iterate), on a hand-written function around a
trained checkpoint's model. A tiny conv net that is not PatchGuard shows the interface is
general.
"""

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from patchguard.adversarial import standard
from patchguard.adversarial.settings import AttackSettings
from patchguard.adversarial.standard import Member
from patchguard.api import evaluate_detector
from patchguard.data.datasets import TensorTestSet
from patchguard.evaluation.evaluator import load_for_evaluation
from patchguard.training.trainer import train

from helpers.models import TINY_SIZE, tiny_config

CHEAP = (Member("apgd", "score", steps=3), Member("apgd", "map", steps=3),
         Member("pgd", "mask", steps=3), Member("square", "score", queries=15))
EPS = 8  # 1/255 units
STEPS = 3


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    """A tiny trained checkpoint (1 epoch)."""
    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("run"), epochs=1),
                 progress=False)


def _test_tensors(test_set):
    """Every test image, label and (B, H, W) mask as tensors."""
    samples = [test_set[i] for i in range(len(test_set))]
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([s["mask"][0] for s in samples])
    return images, torch.tensor([int(s["label"]) for s in samples]), masks


def _plain_pgd(loss_of, images, eps, steps):
    """The paper's PGD written out: no random start, step 2.5 eps / steps, last iterate."""
    alpha = 2.5 * eps / steps
    adversarial = images.clone()
    for _ in range(steps):
        adversarial.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(adversarial).sum(), adversarial)
        stepped = adversarial.detach() + alpha * grad.sign()
        adversarial = torch.minimum(torch.maximum(stepped, images - eps), images + eps)
        adversarial = adversarial.clamp(0, 1)
    return adversarial.detach()


def _aurocs(model, images, labels, masks):
    """sklearn's image and pixel AUROC of the model at ``images``."""
    with torch.no_grad():
        logits = model(images, with_attention=False).logits
        scores, maps = model.image_score(logits), model.anomaly_map(logits)
    return (roc_auc_score(labels.numpy(), scores.numpy()),
            roc_auc_score(masks.numpy().ravel() > 0, maps.numpy().ravel()))


@pytest.mark.slow
def test_a_hand_written_detector_is_attacked_like_the_paper_says(checkpoint, monkeypatch):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    target = load_for_evaluation(checkpoint, device="cpu")
    model, test_set = target.model.eval(), target.test_set
    images, labels, masks = _test_tensors(test_set)
    patch = model.patch_size

    def detector(x):  # PatchGuard as a plain function: scores, maps and patch logits
        logits = model(x, with_attention=False).logits
        return model.image_score(logits), model.anomaly_map(logits), logits

    # The mask objective by hand: mean normal-patch logit minus mean anomalous-patch logit,
    # patches anomalous where any mask pixel is (every patch of an unmasked anomalous image).
    targets = F.max_pool2d((masks[:, None] > 0).float(), patch, patch).flatten(1)
    targets[(labels == 1) & (targets.sum(1) == 0)] = 1.0

    def mask_loss(x):
        logits = model(x, with_attention=False).logits
        normal_mean = (logits * (1 - targets)).sum(1) / ((1 - targets).sum(1) + 1e-8)
        return normal_mean - (logits * targets).sum(1) / (targets.sum(1) + 1e-8)

    for p in model.parameters():
        p.requires_grad_(False)
    attacked = _plain_pgd(mask_loss, images, EPS / 255, STEPS)
    result = evaluate_detector(detector, test_set, (0, EPS), ("pgd", "standard"), steps=STEPS,
                               queries=15, batch_size=4, patch_size=patch, module=model)
    clean, pgd, std = result.rows
    assert [r["attack"] for r in result.rows] == ["clean", "pgd", "standard"]
    assert pgd["objective"] == "mask"  # patch logits: the paper's objective by default
    expected_clean, expected_pgd = _aurocs(model, images, labels, masks), _aurocs(
        model, attacked, labels, masks)
    assert clean["image_auroc"] == pytest.approx(expected_clean[0], abs=1e-12)
    assert clean["pixel_auroc"] == pytest.approx(expected_clean[1], abs=1e-6)
    assert pgd["image_auroc"] == pytest.approx(expected_pgd[0], abs=1e-12)
    assert pgd["pixel_auroc"] == pytest.approx(expected_pgd[1], abs=1e-6)
    # standard holds PGD-3 on the mask objective among its members and keeps, per image, the
    # highest score of a normal image and the lowest of an anomalous one: never a higher AUROC.
    assert std["image_auroc"] <= expected_pgd[0] + 1e-12


def test_without_patch_logits_the_score_objective_is_attacked(checkpoint):
    target = load_for_evaluation(checkpoint, device="cpu")
    model = target.model.eval()
    images, labels, masks = _test_tensors(target.test_set)

    def detector(x):  # scores and maps only, like most anomaly detectors
        logits = model(x, with_attention=False).logits
        return model.image_score(logits), model.anomaly_map(logits)

    def score_loss(x):  # raise normal images' scores, lower anomalous ones'
        return (1 - 2 * labels.float()) * detector(x)[0]

    for p in model.parameters():
        p.requires_grad_(False)
    attacked = _plain_pgd(score_loss, images, EPS / 255, STEPS)
    settings = AttackSettings(attacks=("pgd",), epsilons=(0, EPS), steps=STEPS,
                              objective="score", batch_size=4)
    rows = evaluate_detector(detector, target.test_set, settings=settings, module=model).rows
    expected = _aurocs(model, attacked, labels, masks)
    assert rows[1]["image_auroc"] == pytest.approx(expected[0], abs=1e-12)
    assert rows[1]["pixel_auroc"] == pytest.approx(expected[1], abs=1e-6)
    assert rows[1]["image_auroc"] <= rows[0]["image_auroc"]
    with pytest.raises(ValueError, match="patch logits"):
        evaluate_detector(detector, target.test_set, (0, 8), objective="mask", module=model)


class _ConvDetector(torch.nn.Module):
    """A tiny conv net: per-pixel anomaly = distance of a feature to a fixed normal centre."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        conv = dict(kernel_size=3, padding=1, padding_mode="replicate")  # no border artefacts
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, **conv), torch.nn.Tanh(),
                                            torch.nn.Conv2d(8, 8, **conv))
        self.register_buffer("centre", torch.zeros(1, 8, 1, 1))

    def score(self, images):
        maps = ((self.features(images) - self.centre) ** 2).sum(1)
        return maps.flatten(1).amax(1), maps


def _bright_spot_set(n=8):
    torch.manual_seed(1)
    images = 0.5 + 0.005 * torch.randn(n, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.tensor([0, 1] * (n // 2))
    masks = torch.zeros(n, TINY_SIZE, TINY_SIZE)
    masks[1::2, 20:36, 20:36] = 1
    images[1::2, :, 20:36, 20:36] = 0.56  # anomalies: faint bright squares
    return TensorTestSet(images.clamp(0, 1), labels, masks)


@pytest.mark.slow
def test_any_detector_clean_attacked_and_sanity(monkeypatch):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    net = _ConvDetector().eval()
    data = _bright_spot_set()
    centre = net.features(data.images[data.labels == 0]).mean((0, 2, 3), keepdim=True)
    net.centre.copy_(centre.detach())
    images = data.images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net.score(images)[0].sum(), images)
    assert grad.abs().sum() > 0  # gradients reach the input: the attack can work
    result = evaluate_detector(net.score, data, (0, 16), ("pgd", "square", "standard"),
                               queries=100, batch_size=8, sanity=True)
    clean, pgd, square, std = result.rows
    with torch.no_grad():
        expected = roc_auc_score(data.labels.numpy(), net.score(data.images)[0].numpy())
    assert clean["image_auroc"] == pytest.approx(expected)  # the metric, against sklearn
    assert clean["image_auroc"] > 0.9 and clean["pixel_auroc"] is not None
    assert pgd["objective"] == "score"  # no patch logits: score, not mask, by default
    assert pgd["image_auroc"] < clean["image_auroc"] and square["image_auroc"] < 0.5
    assert std["image_auroc"] < clean["image_auroc"]
    assert "pgd/mask" in std["members_skipped"] and "pgd/mask" not in std["members"]
    assert result.sanity is not None and result.sanity.checks
    assert "Sanity checks" in result.table() and "standard:" in result.table()
    assert all(p.grad is None for p in net.parameters())  # parameters untouched by the attacks


def test_tensor_test_set_refuses_malformed_inputs():
    with pytest.raises(ValueError, match="shape"):
        TensorTestSet(torch.rand(2, 1, 8, 8), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TensorTestSet(torch.rand(2, 3, 8, 8) * 2, [0, 1])
    with pytest.raises(ValueError, match="labels"):
        TensorTestSet(torch.rand(2, 3, 8, 8), [0, 2])
    assert not TensorTestSet(torch.rand(2, 3, 8, 8), [0, 1]).has_pixel_masks


def test_the_old_entry_module_still_imports_and_says_where_the_new_one_is(monkeypatch):
    """``patchguard.robustness`` stays importable for one release: the same function, and a
    DeprecationWarning that names ``patchguard.api``."""
    monkeypatch.delitem(sys.modules, "patchguard.robustness", raising=False)
    with pytest.warns(DeprecationWarning, match=r"patchguard\.api"):
        old = importlib.import_module("patchguard.robustness")
    import patchguard

    assert old.evaluate_detector is evaluate_detector is patchguard.evaluate_detector
