"""Evaluation rows of ``standard``: separate worst cases for image and pixel metrics, members,
worst-case sources and cost; custom member budgets are labelled as such."""

import numpy as np
import pytest
import torch

from patchguard.adversarial import standard
from patchguard.adversarial.standard import Member, MetricAdversarials
from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import load_records
from patchguard.evaluation.evaluator import evaluate, predict_dataset

from helpers.data import make_mvtec_class
from helpers.models import tiny_model

EPS = 8 / 255
CHEAP = (Member("apgd", "score", steps=3), Member("apgd", "map", steps=3),
         Member("pgd", "mask", steps=3), Member("square", "score", queries=20))


def _dataset(tmp_path, n: int = 2):
    make_mvtec_class(tmp_path, n_good=n, n_bad=n)
    return TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)


def test_evaluation_scores_images_and_pixels_from_their_own_worst_cases(tmp_path, monkeypatch):
    dataset = _dataset(tmp_path)
    model = tiny_model().eval()
    brighter, darker = [], []

    def fake(name, problem, budget):
        images = problem.original
        image, pixel = (images + EPS).clamp(0, 1), (images - EPS).clamp(0, 1)
        brighter.append(image)
        darker.append(pixel)
        zeros = torch.zeros(len(images))
        member = torch.zeros(len(images), dtype=torch.long)
        return MetricAdversarials(image, pixel, zeros, zeros, member, member + 3)

    monkeypatch.setattr("patchguard.evaluation.evaluator.attack_per_metric", fake)
    preds = predict_dataset(model, dataset, 8, batch_size=4, keep_images=True, progress=False,
                            attack="standard")
    scores, _ = model.predict(torch.cat(brighter))
    _, maps = model.predict(torch.cat(darker))
    np.testing.assert_allclose(preds.scores, scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(preds.maps, maps.numpy(), rtol=1e-6, atol=1e-7)
    kept = (torch.cat(darker).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(preds.images, kept)  # the images the maps were made on
    assert preds.image_members.tolist() == [0] * 4 and preds.pixel_members.tolist() == [3] * 4


def test_standard_rows_say_standard_list_members_and_cost(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    with caplog.at_level("INFO", logger="patchguard"):
        rows = evaluate(tiny_model(), _dataset(tmp_path), epsilons=(0, 8), steps=50,
                        batch_size=4, progress=False, attacks=("standard", "pgd"),
                        objective="mask")
    clean, row, pgd = rows
    assert row["attack"] == "standard" and row["epsilon"] == 8.0
    assert row["members"] == ("apgd/score/3 steps, apgd/map/3 steps, pgd/mask/3 steps, "
                              "square/score/20 queries")
    assert row["steps"] == 3 and row["queries"] == 20  # the members' budgets, not --steps-test
    assert row["standard_budget"] == "fixed"
    assert "score" in row["objective"] and "map" in row["objective"]
    assert row["images_per_s"] > 0 and row["seconds"] > 0
    assert sum(int(part.rsplit(" ", 1)[1]) for part in row["image_worst_from"].split(", ")) == 4
    assert pgd["steps"] == 50 and pgd["members"] is None and pgd["queries"] is None
    assert clean["members"] is None and "image_worst_from" not in pgd
    assert any("standard at eps 8/255" in r.message and "images/s" in r.getMessage()
               for r in caplog.records)


def test_custom_standard_members_are_labelled_and_used(tmp_path):
    members = (Member("apgd", "score", steps=2), Member("square", "score", queries=5))
    rows = evaluate(tiny_model(), _dataset(tmp_path), epsilons=(8,), batch_size=4,
                    progress=False, attacks=("standard",), standard_members=members)
    assert rows[0]["members"] == "apgd/score/2 steps, square/score/5 queries"
    assert rows[0]["standard_budget"].startswith("custom")


@pytest.mark.slow
def test_standard_is_per_image_the_worst_of_its_members_run_alone(tmp_path, monkeypatch):
    """What a user can check from outside: run each member as its own attack (same seed and
    budget); per image, standard's score is at least every member's for a normal image and at
    most for an anomalous one, so its image AUROC is at most the minimum of theirs (sklearn)."""
    from sklearn.metrics import roc_auc_score

    monkeypatch.setattr(standard, "STANDARD_MEMBERS", CHEAP)
    make_mvtec_class(tmp_path, n_good=3, n_bad=3)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    model = tiny_model().eval()
    kwargs = dict(batch_size=4, progress=False)  # two batches: generators carry across them
    std = predict_dataset(model, dataset, 8, attack="standard", **kwargs)
    # Square takes no steps (None: the default, which it ignores).
    alone = [predict_dataset(model, dataset, 8, m.steps or None, attack=m.attack,
                             objective=m.objective, queries=m.queries, **kwargs) for m in CHEAP]
    wrong_way = 1 - 2 * std.labels  # +1 normal, -1 anomalous: higher = worse for the model
    for member in alone:
        assert (wrong_way * std.scores >= wrong_way * member.scores - 1e-5).all()
    assert roc_auc_score(std.labels, std.scores) <= min(
        roc_auc_score(std.labels, m.scores) for m in alone) + 1e-9
    # Each image's worst case came from the member with the highest score objective there.
    best = np.stack([wrong_way * m.scores for m in alone]).argmax(axis=0)
    np.testing.assert_array_equal(std.image_members, best)
