import torch

from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import load_records
from patchguard.evaluation.evaluator import attack_targets, evaluate

from conftest import make_mvtec_class, tiny_model


def test_attack_targets_all_ones_for_anomalous_images_without_masks():
    batch = {
        "mask": torch.zeros(3, 1, 64, 64),
        "label": torch.tensor([0, 1, 1]),
        "has_mask": torch.tensor([False, False, True]),
    }
    batch["mask"][2, 0, :16, :16] = 1
    targets = attack_targets(batch, 16, torch.device("cpu"))
    assert targets[0].sum() == 0
    assert targets[1].sum() == 16
    assert targets[2].tolist() == [1.0] + [0.0] * 15


def test_evaluate_rows_and_attack_lowers_auroc(tmp_path):
    make_mvtec_class(tmp_path, n_good=6, n_bad=6)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    model = tiny_model()
    rows = evaluate(model, dataset, epsilons=(0, 32), steps=5, batch_size=4, progress=False)
    clean, attacked = rows
    assert clean["attack"] == "clean" and clean["steps"] == 0 and clean["targets"] is None
    assert attacked["attack"] == "pgd" and attacked["epsilon"] == 32.0
    assert attacked["image_auroc"] < clean["image_auroc"] or attacked["image_auroc"] == 0.0
    assert attacked["pixel_auroc"] < clean["pixel_auroc"]


def test_evaluate_several_attacks_rows_carry_objective_and_restarts(tmp_path):
    make_mvtec_class(tmp_path, n_good=4, n_bad=4)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    rows = evaluate(tiny_model(), dataset, epsilons=(0, 8), steps=2, batch_size=8,
                    progress=False, attacks=("fgsm", "pgd-rs"), objective="score", restarts=2)
    assert [(r["attack"], r["epsilon"]) for r in rows] == [
        ("clean", 0.0), ("fgsm", 8.0), ("pgd-rs", 8.0)]
    assert rows[0]["objective"] is None and rows[2]["objective"] == "score"
    assert rows[2]["restarts"] == 2
    for row in rows:
        assert {"aupro", "image_ap", "pixel_f1_max"} <= set(row)


# The evaluation's default attack and scores against the authors' outputs:
# tests/models/test_reference.py::test_evaluation_reproduces_the_authors_clean_and_attacked_scores
