import pytest
import torch

from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import load_records
from patchguard.evaluation.evaluator import attack_targets, evaluate

from helpers.data import make_mvtec_class
from helpers.models import tiny_model


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


def test_decoded_test_set_gives_the_samples_bit_for_bit(tmp_path):
    from patchguard.evaluation.evaluator import DecodedTestSet

    make_mvtec_class(tmp_path, n_good=2, n_bad=3)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    decoded = DecodedTestSet(dataset, workers=0)
    assert len(decoded) == len(dataset) and decoded.has_pixel_masks
    assert decoded.samples[0]["image"].dtype == torch.uint8  # kept compact
    for i in range(len(dataset)):
        want, got = dataset[i], decoded[i]
        assert set(got) == set(want)
        for key in want:
            if isinstance(want[key], torch.Tensor):
                assert torch.equal(got[key], want[key]), key
            else:
                assert got[key] == want[key], key


def test_evaluation_decodes_once_scores_clean_once_and_keeps_the_rows(tmp_path, monkeypatch):
    """Rows equal a plain per-setting evaluation (independent AUROCs from scikit-learn), while
    every image is decoded once and the clean pass runs once over two evaluate calls."""
    from sklearn.metrics import roc_auc_score

    from patchguard.evaluation import evaluator

    make_mvtec_class(tmp_path, n_good=3, n_bad=3)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    model = tiny_model()
    reads = []
    real_getitem = TestDataset.__getitem__
    monkeypatch.setattr(TestDataset, "__getitem__",
                        lambda self, i: (reads.append(i), real_getitem(self, i))[1])
    clean_passes = []
    real_predict = evaluator._predict
    monkeypatch.setattr(evaluator, "_predict", lambda *a: (
        clean_passes.append(a[2] == 0), real_predict(*a))[1])
    rows = evaluate(model, dataset, epsilons=(0, 4, 8), steps=2, batch_size=4, progress=False)
    assert sorted(reads) == list(range(len(dataset)))  # decoded once for three passes
    again = evaluate(model, dataset, epsilons=(0, 2), steps=2, batch_size=4, progress=False)
    assert sorted(reads) == list(range(len(dataset)))  # and not again for the second call
    timing = ("seconds", "images_per_s")  # a stored clean pass is quicker, nothing else differs
    assert clean_passes.count(True) == 1
    assert ({k: v for k, v in again[0].items() if k not in timing}
            == {k: v for k, v in rows[0].items() if k not in timing})
    # A new model state, even behind autograd's back (.data), is scored again.
    bias = model.discriminator.output_layer[0].bias
    saved = bias.detach().clone()
    bias.data += 1.0
    evaluate(model, dataset, epsilons=(0, 2), steps=2, batch_size=4, progress=False)
    assert clean_passes.count(True) == 2
    bias.data.copy_(saved)

    monkeypatch.setattr(TestDataset, "__getitem__", real_getitem)
    plain = TestDataset(dataset.records, 64)
    for row in rows:
        preds = evaluator.predict_dataset(model, plain, row["epsilon"], 2, batch_size=4,
                                          progress=False)
        assert row["image_auroc"] == pytest.approx(roc_auc_score(preds.labels, preds.scores),
                                                   abs=1e-12)
        assert row["pixel_auroc"] == pytest.approx(
            roc_auc_score(preds.masks.ravel(), preds.maps.ravel()), abs=1e-9)
