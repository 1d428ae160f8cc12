import torch

from patchguard.data import TestDataset, load_records
from patchguard.evaluation import attack_targets, evaluate

from conftest import make_mvtec_class
from test_model import tiny_model


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
