"""Exact early stopping of ``standard``: the rows are those of the full attack, with fewer
passes; it engages only where no pixel metric or per-image output is reported."""

import json

import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from patchguard.adversarial import standard
from patchguard.adversarial.early_stop import ScoreBounds
from patchguard.adversarial.standard import Member
from patchguard.cli import main
from patchguard.data.datasets import TensorTestSet
from patchguard.evaluation.evaluator import evaluate, evaluate_with_predictions
from patchguard.training.trainer import train

from helpers.data import make_mvtec_class
from helpers.models import TINY_SIZE, tiny_config, tiny_model

# Enough budget for images to get placed part-way, small enough for a test.
MEMBERS = (Member("apgd", "score", steps=6), Member("apgd", "map", steps=4),
           Member("pgd", "mask", steps=3), Member("square", "score", queries=25))
# Fields that say how long the attack took or which member found what: they may differ.
DIAGNOSTIC = ("seconds", "images_per_s", "passes_per_image", "image_worst_from",
              "pixel_worst_from")


def _metrics(rows):
    return [{k: v for k, v in r.items() if k not in DIAGNOSTIC} for r in rows]


def _unmasked_set(seed, n=10):
    """Random textures with faint bright squares on the anomalous half; no pixel masks."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.2 * torch.rand(n, 3, TINY_SIZE, TINY_SIZE, generator=generator)
    labels = torch.tensor([0, 1] * (n // 2))
    images[1::2, :, 16:40, 16:40] += 0.15
    return TensorTestSet(images.clamp(0, 1), labels)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny checkpoint's model after one epoch."""
    from patchguard.models.factory import load_model

    last = train(tiny_config(tiny_data, tmp_path_factory.mktemp("run"), epochs=1),
                 progress=False)
    return load_model(last, torch.device("cpu"))[0]


@pytest.mark.slow
@pytest.mark.parametrize(("model_seed", "data_seed", "eps"), [(0, 1, 8), (1, 2, 32), (2, 3, 64)])
def test_untrained_models_give_the_same_rows_with_fewer_passes(model_seed, data_seed, eps):
    torch.manual_seed(model_seed)
    model = tiny_model().eval()
    data = _unmasked_set(data_seed)
    kwargs = dict(epsilons=(0, eps), attacks=("standard",), standard_members=MEMBERS,
                  batch_size=4, seed=model_seed, progress=False)
    full = evaluate(model, data, early_stop=False, **kwargs)
    early = evaluate(model, data, **kwargs)
    assert _metrics(early) == _metrics(full)
    assert early[1]["passes_per_image"] <= full[1]["passes_per_image"]
    if eps == 64:  # a large budget separates the classes at once: most work is skipped
        assert early[1]["image_auroc"] == 0.0
        assert early[1]["passes_per_image"] < 0.5 * full[1]["passes_per_image"]


@pytest.mark.slow
def test_a_trained_model_gives_the_same_rows(trained):
    data = _unmasked_set(5, n=12)
    for seed in (0, 3):
        kwargs = dict(epsilons=(0, 2, 16), attacks=("pgd", "standard"),
                      standard_members=MEMBERS, batch_size=5, seed=seed, progress=False)
        full = evaluate(trained, data, early_stop=False, **kwargs)
        assert _metrics(evaluate(trained, data, **kwargs)) == _metrics(full)


@pytest.mark.slow
def test_the_reported_image_metrics_match_sklearn_on_the_attacked_scores():
    torch.manual_seed(4)
    model = tiny_model().eval()
    data = _unmasked_set(6)
    rows, preds = evaluate_with_predictions(model, data, epsilons=(0, 16),
                                            attacks=("standard",), standard_members=MEMBERS,
                                            batch_size=4, progress=False)
    attacked = preds[16.0]  # returned per-image scores: this pass ran in full
    assert rows[1]["image_auroc"] == pytest.approx(
        roc_auc_score(attacked.labels, attacked.scores), abs=1e-12)
    assert rows[1]["image_ap"] == pytest.approx(
        average_precision_score(attacked.labels, attacked.scores), abs=1e-12)
    # The clean image is a candidate: no anomalous score above its clean one, no normal below.
    clean = preds[0.0].scores
    anomalous = attacked.labels == 1
    assert (attacked.scores[anomalous] <= clean[anomalous]).all()
    assert (attacked.scores[~anomalous] >= clean[~anomalous]).all()


def _with_masks(plain: TensorTestSet) -> TensorTestSet:
    """``plain``'s images and labels with a defect square masked on every other image."""
    masked = TensorTestSet(plain.images, plain.labels,
                           torch.zeros(len(plain.labels), TINY_SIZE, TINY_SIZE))
    masked.masks[1::2, 16:40, 16:40] = 1
    return masked

@pytest.mark.slow
def test_pixel_metrics_or_kept_images_keep_every_image_attacked():
    torch.manual_seed(0)
    model = tiny_model().eval()
    plain = _unmasked_set(1)
    masked = _with_masks(plain)
    kwargs = dict(epsilons=(64,), attacks=("standard",), standard_members=MEMBERS,
                  batch_size=4, progress=False)
    with_pixels = evaluate(model, masked, **kwargs)[0]
    assert with_pixels["passes_per_image"] == evaluate(model, masked, early_stop=False,
                                                       **kwargs)[0]["passes_per_image"]
    full = evaluate(model, plain, early_stop=False, **kwargs)[0]["passes_per_image"]
    kept_rows, _ = evaluate_with_predictions(model, plain, keep_images=True, **kwargs)
    assert kept_rows[0]["passes_per_image"] == full
    # The first attack's per-image scores are returned: that pass runs in full too.
    assert evaluate_with_predictions(model, plain, **kwargs)[0][0]["passes_per_image"] == full
    assert evaluate(model, plain, **kwargs)[0]["passes_per_image"] < full


def test_bounds_place_only_images_that_cannot_cross():
    bounds = ScoreBounds(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1]))
    rows = torch.arange(4)
    assert bounds.placed(rows).tolist() == [False, False, False, False]
    bounds.tighten(torch.tensor([1]), torch.tensor(3.5))  # normal 1 now above every anomalous
    assert bounds.placed(rows).tolist() == [False, True, False, False]
    bounds.tighten(torch.tensor([3]), torch.tensor(4.0))  # an anomalous bound only falls
    assert bounds.bound[3] == 3.0
    bounds.tighten(torch.tensor([2, 3]), torch.tensor([-1.0, 0.0]))  # a tie (0.0) is no place
    assert bounds.placed(rows).tolist() == [False, True, True, False]


@pytest.mark.slow
@pytest.mark.integration
def test_the_command_line_switch_gives_identical_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(standard, "STANDARD_MEMBERS", MEMBERS)
    data = tmp_path / "data"
    make_mvtec_class(data, masks=False, n_good=4, n_bad=4)
    last = train(tiny_config(data, tmp_path / "run", epochs=1), progress=False)
    results = {}
    for name, extra in (("early", []), ("full", ["--no-early-stop"])):
        json_path = tmp_path / f"{name}.json"
        assert main(["test", "--checkpoint", str(last), "--attack", "standard",
                     "--epsilon-test", "8", "--batch-size", "4", "--json", str(json_path),
                     "--gallery", "0", "--no-record", "--quiet", *extra]) == 0
        results[name] = json.loads(json_path.read_text())
    assert _metrics(results["early"]) == _metrics(results["full"])
    assert len(results["early"]) == 2 and results["early"][1]["attack"] == "standard"


@pytest.mark.slow
def test_image_metrics_only_stop_early_on_a_masked_set_with_the_masks_as_targets():
    torch.manual_seed(0)
    model = tiny_model().eval()
    plain = _unmasked_set(1)
    masked = _with_masks(plain)
    kwargs = dict(epsilons=(0, 64), attacks=("standard",), standard_members=MEMBERS,
                  batch_size=4, progress=False)
    full = evaluate(model, masked, early_stop=False, **kwargs)
    images_only = evaluate(model, masked, pixel_metrics=False, **kwargs)
    assert [r["pixel_auroc"] for r in images_only] == [None, None]
    assert images_only[1]["passes_per_image"] < full[1]["passes_per_image"]
    # the same image metrics as the full run on the same targets (the masks, not all-ones)
    assert images_only[1]["targets"] == full[1]["targets"] == "ground-truth masks"
    for key in ("image_auroc", "image_ap", "image_f1_max"):
        assert images_only[1][key] == full[1][key]
    unmasked = evaluate(model, plain, early_stop=False, **kwargs)
    assert unmasked[1]["targets"] != images_only[1]["targets"]


@pytest.mark.parametrize("early_stop", [True, False])
def test_the_reported_passes_are_every_pass_after_the_clean_one(early_stop):
    # Early stopping skips images, and with them the pixel maps nothing reads: no model pass
    # goes uncounted, e.g. one to score maps of images no member attacked any more.
    torch.manual_seed(0)
    model = tiny_model().eval()
    data = _unmasked_set(1, n=8)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    rows = evaluate(model, data, epsilons=(0, 64), attacks=("standard",),
                    standard_members=MEMBERS, batch_size=4, progress=False,
                    early_stop=early_stop)
    assert seen[:2] == [4, 4]  # the clean pass, then only the attack's own passes
    assert sum(seen[2:]) == round(rows[1]["passes_per_image"] * len(data))
    if early_stop:
        assert rows[1]["passes_per_image"] < 10
