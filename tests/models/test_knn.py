"""The kNN head (patch memory bank): distances, scores and coreset against plain numpy / scipy
loops, gradients through it, and its checkpoint through train / load / test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from patchguard.api import TensorTestSet, evaluate_detector
from patchguard.cli import main
from patchguard.models.factory import load_model
from patchguard.models.knn import PatchKNN, nearest_distances, select_coreset
from patchguard.training.trainer import train
from patchguard.utils.checks import InputError

from helpers.models import TINY_BACKBONE, TINY_SIZE, tiny_config


def _model(top_k: int = 2) -> PatchKNN:
    torch.manual_seed(0)
    return PatchKNN(TINY_BACKBONE, TINY_SIZE, [3], top_k=top_k, map_sigma=2.0, map_radius=3)


@pytest.mark.parametrize("chunk", [5, 4096])
def test_nearest_distances_match_scipy(chunk):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 7, 16)).astype(np.float32) * 3 + 1
    bank = rng.normal(size=(23, 16)).astype(np.float32) * 3 + 1
    got = nearest_distances(torch.from_numpy(features), torch.from_numpy(bank), chunk=chunk)
    expected = cdist(features.reshape(-1, 16).astype(np.float64), bank).min(1).reshape(3, 7)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_image_scores_are_the_top_k_mean_of_a_plain_nearest_neighbour_loop():
    model = _model(top_k=2).eval()
    torch.manual_seed(1)
    normal, test = torch.rand(3, 3, TINY_SIZE, TINY_SIZE), torch.rand(4, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        bank = model.patch_features(normal).reshape(-1, model.bank.shape[1])
        model.set_bank(bank)
        features = model.patch_features(test).double().numpy()
    scores, maps = model.predict(test)
    bank64 = bank.double().numpy()
    for i in range(len(test)):
        per_patch = [min(np.sqrt(((f - b) ** 2).sum()) for b in bank64) for f in features[i]]
        expected = np.mean(sorted(per_patch)[-2:])
        assert scores[i].item() == pytest.approx(expected, rel=1e-4)
        # the map's peak lies in the patch of the largest distance (smoothing keeps it there)
        grid = model.grid_size
        peak = np.unravel_index(int(maps[i].argmax()), maps[i].shape)
        patch = int(np.argmax(per_patch))
        assert abs(peak[0] // model.patch_size - patch // grid) <= 1
        assert abs(peak[1] // model.patch_size - patch % grid) <= 1
    assert maps.shape == (4, TINY_SIZE, TINY_SIZE)


def test_greedy_coreset_picks_the_farthest_point_each_time():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(60, 8)).astype(np.float32)
    chosen = select_coreset(torch.from_numpy(points), 10, "greedy", seed=3).tolist()
    assert len(set(chosen)) == 10
    # the greedy k-center rule replayed with scipy from one of the chosen points (the random
    # start) gives exactly this set: each next pick is the point farthest from those picked
    def replay(first: int) -> list[int]:
        order = [first]
        while len(order) < 10:
            order.append(int(np.argmax(cdist(points, points[order]).min(1))))
        return sorted(order)

    assert any(replay(first) == sorted(chosen) for first in chosen)
    random = select_coreset(torch.from_numpy(points), 10, "random", seed=3)
    assert len(set(random.tolist())) == 10
    assert select_coreset(torch.from_numpy(points), 0).tolist() == list(range(60))
    with pytest.raises(InputError, match="knn_coreset"):
        select_coreset(torch.from_numpy(points), 5, "kmeans")


def test_gradients_are_finite_even_for_a_bank_patch_and_attacks_move_the_score():
    model = _model(top_k=1).eval()
    torch.manual_seed(2)
    normal = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        model.set_bank(model.patch_features(normal).reshape(-1, model.bank.shape[1]))
    images = normal.clone().requires_grad_(True)
    model.image_score(model(images).logits).sum().backward()
    assert torch.isfinite(images.grad).all()
    anomalous = torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 0.2 + 0.8
    near = (normal + 0.01 * torch.randn_like(normal)).clamp(0, 1)
    data = TensorTestSet(torch.cat([near, anomalous]), torch.tensor([0, 0, 1, 1]))
    result = evaluate_detector(model, data, epsilons=(0, 8), attacks=("apgd",),
                               objective="score", steps=5)
    clean, attacked = result.rows
    assert clean["image_auroc"] == 1.0  # near-bank images against far-off bright ones
    assert attacked["epsilon"] == 8 and attacked["image_auroc"] <= clean["image_auroc"]


@pytest.mark.slow
def test_knn_run_writes_a_checkpoint_that_test_and_predict_load(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path / "run", head="knn", knn_bank_size=50,
                         val_fraction=0.25)
    last = train(config, progress=False)
    model, state = load_model(last)
    assert isinstance(model, PatchKNN) and model.bank.shape == (50, 64)
    assert state["train_summary"]["bank_patches"] == 50
    assert "thresholds" in state
    assert main(["test", "--checkpoint", str(last), "--epsilon-test", "0", "2", "--steps-test", "2",
                 "--attack", "pgd", "--objective", "score", "--quiet"]) == 0
    assert "image AUROC" in capsys.readouterr().out
    # nothing to resume: a clear refusal, not a traceback
    assert main(["train", "--resume", str(last), "--quiet"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
