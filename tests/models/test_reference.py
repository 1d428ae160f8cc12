"""patchguard against the authors' own code: a tiny model in their checkpoint format and their
outputs on fixed inputs (tests/fixtures/reference/README.md says where the file comes from).

Imported into patchguard, the model must reproduce every reference output to float noise: the
import (key mapping, every key used), the network (logits, scores, smoothed maps, patch
attention), the loss (BCE plus the attention regulariser, with the coefficients the import
records), the faithful PGD (bit for bit) and the evaluation plumbing built on it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from patchguard.adversarial.training_attacks import pgd_attack
from patchguard.authors.convert import convert_original_state_dict, map_original_key
from patchguard.cli import main
from patchguard.config import TrainConfig
from patchguard.evaluation.evaluator import evaluate, predict_dataset
from patchguard.models.patchguard import PatchGuard, patch_targets
from patchguard.training.losses import attention_kl_regularizer, patch_bce_loss
from patchguard.utils.checkpoint import load_checkpoint

from helpers.attacks import run_attack
from helpers.data import REFERENCE_DIR

# The authors' settings of the reference run (tests/fixtures/reference/README.md).
AUTHORS_ARGS = dict(backbone="test_vit", image_size=64, feature_layers=[6], reg_layers=[2, 4, 6],
                    dsc_heads=4)
EPS, STEPS = 8 / 255, 10


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def imported(reference) -> tuple[PatchGuard, dict]:
    """The reference state dict through the import, as a model in eval mode, and its payload."""
    payload = convert_original_state_dict(reference["state_dict"], **AUTHORS_ARGS)
    model = PatchGuard.from_config(TrainConfig(**payload["config"]))
    model.load_state_dict(payload["model"], strict=True)
    return model.eval(), payload


def test_import_reads_the_authors_layout_and_shapes(imported):
    _, payload = imported
    config = payload["config"]
    # Read from the weights, not given: hidden width 64, one discriminator block.
    assert (config["dsc_hidden"], config["dsc_layers"], config["dsc_heads"]) == (64, 1, 4)
    assert config["reg_coefficients"] == [0.005, 0.01, 0.05]  # the authors' three, in order
    assert payload["epoch"] is None and "optimizer" not in payload


def test_model_reproduces_the_authors_outputs(reference, imported):
    model, _ = imported
    with torch.no_grad():
        output = model(reference["images"])
    torch.testing.assert_close(output.logits, reference["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(model.image_score(output.logits), reference["image_scores"],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(model.anomaly_map(output.logits), reference["maps"], rtol=0,
                               atol=1e-5)
    assert len(output.attentions) == len(reference["attentions"]) == 3
    for ours, theirs in zip(output.attentions, reference["attentions"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # predict() is the inference path (no attention capture): the same numbers.
    scores, maps = model.predict(reference["images"])
    torch.testing.assert_close(scores, reference["image_scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(maps, reference["maps"], rtol=0, atol=1e-5)


def test_patch_targets_and_metrics_match_the_authors(reference):
    assert torch.equal(patch_targets(reference["pixel_masks"], 16), reference["patch_targets"])
    labels = reference["labels"].numpy()
    assert roc_auc_score(labels, reference["image_scores"].numpy()) == pytest.approx(
        float(reference["image_auroc"]), abs=1e-6)


@pytest.mark.parametrize("targets", ["all_zero", "patch"])
def test_loss_reproduces_the_authors_loss(reference, imported, targets):
    _, payload = imported
    logits, attentions = reference["logits"], reference["attentions"]
    patch = reference["patch_targets"] if targets == "patch" else torch.zeros_like(logits)
    loss = patch_bce_loss(logits, patch) + attention_kl_regularizer(
        attentions, payload["config"]["reg_coefficients"])
    expected = reference[f"loss_{targets}_targets" if targets == "patch"
                         else "loss_all_zero_targets"]
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


def test_faithful_pgd_reproduces_the_authors_adversarial_images(reference, imported):
    model, _ = imported
    images, targets = reference["images"], reference["patch_targets"]
    adversarial = pgd_attack(model, images, targets, EPS, STEPS)
    torch.testing.assert_close(adversarial, reference["pgd_images"], rtol=0, atol=1e-6)
    # The evaluation registry's "pgd" (mask objective) is that same attack.
    via_registry, _ = run_attack("pgd", model, images, targets, reference["labels"], EPS, STEPS)
    torch.testing.assert_close(via_registry, reference["pgd_images"], rtol=0, atol=1e-6)
    with torch.no_grad():
        logits = model(adversarial, with_attention=False).logits
    torch.testing.assert_close(logits, reference["pgd_logits"], rtol=0, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


class _ReferenceTestSet(torch.utils.data.Dataset):
    """The reference inputs shaped like patchguard's TestDataset samples."""

    def __init__(self, reference: dict) -> None:
        self.reference = reference
        self.has_pixel_masks = True

    def __len__(self) -> int:
        return len(self.reference["labels"])

    def __getitem__(self, i: int) -> dict:
        mask = self.reference["pixel_masks"][i][None]
        return {"image": self.reference["images"][i], "mask": mask,
                "label": int(self.reference["labels"][i]), "has_mask": bool(mask.any()),
                "path": f"reference/{i}.png"}


def test_evaluation_reproduces_the_authors_clean_and_attacked_scores(reference, imported):
    model, _ = imported
    dataset = _ReferenceTestSet(reference)
    attacked = predict_dataset(model, dataset, 8.0, STEPS, batch_size=4, progress=False)
    # Their adversarial logits, scored as they score images (mean of the top 3).
    expected = reference["pgd_logits"].topk(3, dim=1).values.mean(dim=1)
    np.testing.assert_allclose(attacked.scores, expected.numpy(), rtol=0, atol=1e-5)
    rows = evaluate(model, dataset, epsilons=(0, 8), steps=STEPS, batch_size=4, progress=False)
    assert rows[0]["image_auroc"] == pytest.approx(float(reference["image_auroc"]), abs=1e-6)
    assert rows[0]["pixel_auroc"] == pytest.approx(float(reference["pixel_auroc"]), abs=1e-6)
    labels = reference["labels"].numpy()
    assert rows[1]["image_auroc"] == pytest.approx(roc_auc_score(labels, expected.numpy()),
                                                   abs=1e-9)


@pytest.mark.integration
def test_cli_import_of_the_authors_file_reproduces_their_scores(reference, tmp_path, capsys):
    original = tmp_path / "patchguard_mvtec_bottle.pth"
    torch.save(reference["state_dict"], original)
    out = tmp_path / "imported.pt"
    code = main(["import-checkpoint", "--original", str(original), "--output", str(out),
                 "--backbone", "test_vit", "--image-size", "64", "--feature-layers", "6",
                 "--reg-layers", "2", "4", "6"])
    assert code == 0, capsys.readouterr().err
    state = load_checkpoint(out)
    assert (state["config"]["dataset"], state["config"]["class_name"]) == ("mvtec", "bottle")
    from patchguard.inference.detector import load

    result = load(out, device="cpu").predict(reference["images"])
    np.testing.assert_allclose(result.scores, reference["image_scores"].numpy(), rtol=0,
                               atol=1e-5)
    assert main(["info", "--checkpoint", str(out)]) == 0
    assert "original PatchGuard checkpoint patchguard_mvtec_bottle.pth" in capsys.readouterr().out


def _authors_vits14_keys() -> dict[str, tuple[int, ...]]:
    """Every key and shape of the authors' default model (ViT-S/14 DINOv2, 224 px)."""
    shapes = {}
    for line in (REFERENCE_DIR / "original-vits14-state-dict-keys.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, _dtype = re.match(r"(\S+) \(([\d, ]*)\) (\S+)$", line).groups()
        shapes[key] = tuple(int(v) for v in shape.split(",") if v.strip())
    return shapes


def test_import_uses_every_key_of_the_authors_default_model():
    """The released per-class checkpoints' layout, from the authors' model, not from our table."""
    shapes = _authors_vits14_keys()
    assert len(shapes) == 187
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    payload = convert_original_state_dict(state)  # the defaults are the authors' defaults
    config = payload["config"]
    assert (config["backbone"], config["image_size"], config["feature_layers"]) == (
        "vit_small_patch14_dinov2.lvd142m", 224, [12])
    assert (config["dsc_hidden"], config["dsc_layers"]) == (2048, 1)
    # Every one of their keys lands on one of ours with its shape, and nothing of ours is left.
    ours = payload["model"]
    assert {map_original_key(key) for key in shapes} == set(ours)
    for key, shape in shapes.items():
        assert tuple(ours[map_original_key(key)].shape) == shape, key
