"""The ``standard`` evaluation: fixed members, per-image worst case per metric family."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from patchguard.adversarial import standard
from patchguard.adversarial.apgd import APGD_MIN_STEPS
from patchguard.adversarial.problem import AttackBudget, AttackProblem
from patchguard.adversarial.standard import (
    STANDARD_MEMBERS,
    Member,
    attack_standard_per_metric,
)

from helpers.attacks import attack_batch, objective_value, run_attack
from helpers.models import tiny_model

EPS = 8 / 255
# Budgets do not change what is checked here (how the worst case is picked), only the cost.
CHEAP = (Member("apgd", "score", steps=3), Member("apgd", "map", steps=3),
         Member("pgd", "mask", steps=3), Member("square", "score", queries=20))


def test_the_standard_members_are_the_documented_ones():
    assert [m.describe() for m in STANDARD_MEMBERS] == [
        "apgd/score/100 steps", "apgd/map/100 steps", "pgd/mask/10 steps",
        "square/score/1000 queries"]
    assert all(m.steps >= APGD_MIN_STEPS for m in STANDARD_MEMBERS if m.attack == "apgd")


def _image_auroc(model, labels, images):
    """sklearn's AUROC of the model's image scores: the independent reference."""
    with torch.no_grad():
        scores = model.image_score(model(images, with_attention=False).logits)
    return roc_auc_score(labels.numpy(), scores.numpy())


def test_standard_is_the_per_image_worst_of_its_members_for_each_metric():
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch(seed=3, n=6)
    problem = AttackProblem(model, x, targets, labels, EPS, "score", masks)
    result = attack_standard_per_metric(
        problem, AttackBudget(generator=torch.Generator().manual_seed(5)), members=CHEAP)
    # The members alone, in the same order from the same seed, see the same random numbers.
    generator = torch.Generator().manual_seed(5)
    alone = [run_attack(m.attack, model, x, targets, labels, EPS, m.steps, objective=m.objective,
                        masks=masks, generator=generator, queries=m.queries)[0] for m in CHEAP]
    # The clean image is a candidate of the image metrics' worst case too (the last one).
    scores = torch.stack([objective_value(model, "score", a, targets, labels, masks)
                          for a in (*alone, x)])
    maps = torch.stack([objective_value(model, "map", a, targets, labels, masks) for a in alone])
    # Higher objective = worse for the model: per image, standard's attacker objective is at
    # least every member's (the per-image worst case) and equal to the best member's.
    image_value = objective_value(model, "score", result.image, targets, labels, masks)
    pixel_value = objective_value(model, "map", result.pixel, targets, labels, masks)
    assert (image_value >= scores - 1e-6).all() and (pixel_value >= maps - 1e-6).all()
    torch.testing.assert_close(image_value, scores.max(dim=0).values)
    torch.testing.assert_close(pixel_value, maps.max(dim=0).values)
    torch.testing.assert_close(result.image_loss, image_value)
    torch.testing.assert_close(result.pixel_loss, pixel_value)
    assert result.image_member.tolist() == scores.argmax(dim=0).tolist()
    assert result.pixel_member.tolist() == maps.argmax(dim=0).tolist()
    # In the defender's terms: each image's score is at least every member's for a normal
    # image and at most for an anomalous one, so the image AUROC is at most each member's.
    assert all(_image_auroc(model, labels, result.image)
               <= _image_auroc(model, labels, a) + 1e-9 for a in alone)
    for adv in (result.image, result.pixel):
        assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def _by_hand(model, objective, x, labels, masks):
    """The score and map objectives written out: + score of a normal image, - of an anomalous
    one; mean map over normal pixels minus mean over anomalous pixels (masks at map size)."""
    with torch.no_grad():
        logits = model(x, with_attention=False).logits
        if objective == "score":
            return (1 - 2 * labels) * model.image_score(logits)
        maps, anomalous = model.anomaly_map(logits).flatten(1), masks[:, 0].flatten(1)
        return ((maps * (1 - anomalous)).sum(1) / (1 - anomalous).sum(1).clamp(min=1e-8)
                - (maps * anomalous).sum(1) / anomalous.sum(1).clamp(min=1e-8))


@pytest.mark.slow
def test_plain_standard_ignores_steps_and_keeps_per_image_the_members_best(monkeypatch):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch(seed=6)
    for objective in ("map", "score"):
        generator = torch.Generator().manual_seed(1)
        alone = [run_attack(m.attack, model, x, targets, labels, EPS, m.steps,
                            objective=m.objective, masks=masks, generator=generator,
                            queries=m.queries)[0] for m in CHEAP]
        expected = torch.stack([_by_hand(model, objective, a, labels, masks) for a in alone])
        for steps in (1, 7):
            adv, loss = run_attack("standard", model, x, targets, labels, EPS, steps,
                                   objective=objective, masks=masks,
                                   generator=torch.Generator().manual_seed(1))
            value = _by_hand(model, objective, adv, labels, masks)
            torch.testing.assert_close(value, expected.max(dim=0).values)
            torch.testing.assert_close(loss, value, rtol=1e-5, atol=1e-5)


def test_a_detector_without_patch_logits_skips_the_mask_member():
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch(seed=2)

    def plain(images):  # scores and maps only: no mask objective possible
        logits = model(images, with_attention=False).logits
        return model.image_score(logits), model.anomaly_map(logits)

    run, skipped = standard.standard_members(False, CHEAP)
    assert [m.attack for m in skipped] == ["pgd"] and len(run) == 3
    problem = AttackProblem(plain, x, None, labels, EPS, "score", masks)
    result = attack_standard_per_metric(problem, AttackBudget(), members=CHEAP)
    assert set(result.image_member.tolist()) <= {0, 1, 2}
    assert np.isfinite(result.image_loss.numpy()).all()
