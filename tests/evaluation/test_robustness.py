"""patchguard.robustness.evaluate_detector: any differentiable detector under the same attacks.

The reference is the built-in path (``patchguard test``: load_for_evaluation + evaluate on the
PatchGuard model) on the same checkpoint; a hand-written function around the loaded model must
give the same rows. A tiny conv net that is not PatchGuard shows the interface is general.
"""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from patchguard.adversarial import standard
from patchguard.adversarial.standard import Member
from patchguard.data.datasets import TensorTestSet
from patchguard.evaluation.evaluator import evaluate, load_for_evaluation
from patchguard.robustness import evaluate_detector
from patchguard.training.trainer import train

from helpers.models import TINY_SIZE, tiny_config

CHEAP = (Member("apgd", "score", steps=3), Member("apgd", "map", steps=3),
         Member("pgd", "mask", steps=3), Member("square", "score", queries=15))
# Timing fields differ run to run; everything else must be identical.
TIMING = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    """A tiny trained checkpoint (1 epoch)."""
    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("run"), epochs=1),
                 progress=False)


def _same_rows(ours, reference):
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert {k: v for k, v in a.items() if k not in TIMING} == {
            k: v for k, v in b.items() if k not in TIMING}


def test_a_hand_written_detector_gives_the_rows_of_the_built_in_path(checkpoint, monkeypatch):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    target = load_for_evaluation(checkpoint, device="cpu")
    model = target.model
    settings = dict(epsilons=(0, 8), attacks=("pgd", "apgd", "square", "standard"))
    reference = evaluate(model, target.test_set, settings["epsilons"], 3, 4, progress=False,
                         attacks=settings["attacks"], queries=15)

    def detector(images):  # PatchGuard as a plain function: scores, maps and patch logits
        logits = model(images, with_attention=False).logits
        return model.image_score(logits), model.anomaly_map(logits), logits

    ours = evaluate_detector(detector, target.test_set, **settings, steps=3, queries=15,
                             batch_size=4, patch_size=model.patch_size, module=model)
    _same_rows(ours.rows, reference)
    assert [r["attack"] for r in ours.rows] == ["clean", "pgd", "apgd", "square", "standard"]


def test_without_patch_logits_the_score_and_map_objectives_match_too(checkpoint):
    target = load_for_evaluation(checkpoint, device="cpu")
    model = target.model
    members = [m for m in CHEAP if m.objective != "mask"]
    kwargs = dict(attacks=("pgd", "square", "standard"), objective="score", queries=15,
                  standard_members=members)
    reference = evaluate(model, target.test_set, (0, 8), 3, 4, progress=False, **kwargs)

    def detector(images):  # scores and maps only, like most anomaly detectors
        logits = model(images, with_attention=False).logits
        return model.image_score(logits), model.anomaly_map(logits)

    ours = evaluate_detector(detector, target.test_set, (0, 8), steps=3, batch_size=4,
                             module=model, **kwargs)
    _same_rows(ours.rows, reference)
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
