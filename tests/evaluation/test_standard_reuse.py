"""``standard`` keeps the anomaly maps of its pixel worst cases from the pass that chose them
instead of scoring those images again: the maps, and so every row, are those of a fresh pass."""

import pytest
import torch

from patchguard.adversarial import standard
from patchguard.adversarial.problem import AttackBudget, AttackProblem
from patchguard.adversarial.standard import Member, attack_standard_per_metric, member_generators
from patchguard.data.datasets import TensorTestSet
from patchguard.evaluation.evaluator import evaluate

from helpers.models import TINY_SIZE, tiny_model

MEMBERS = (Member("apgd", "score", steps=4), Member("apgd", "map", steps=4),
           Member("pgd", "mask", steps=3), Member("square", "score", queries=12))
DIAGNOSTIC = ("seconds", "images_per_s", "passes_per_image")


def _model(seed):
    """A tiny model whose weights differ per seed (tiny_model itself always seeds 0)."""
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _masked_set(seed, n=8):
    """Random textures with a bright square on the anomalous half, masked where it is."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.2 * torch.rand(n, 3, TINY_SIZE, TINY_SIZE, generator=generator)
    labels = torch.tensor([0, 1] * (n // 2))
    masks = torch.zeros(n, TINY_SIZE, TINY_SIZE)
    masks[1::2, 16:40, 8:32] = 1
    images[1::2, :, 16:40, 8:32] += 0.2
    return TensorTestSet(images.clamp(0, 1), labels, masks)


@pytest.mark.parametrize(("seed", "eps"), [(0, 4), (1, 8), (2, 16)])
def test_the_kept_maps_are_those_of_a_fresh_pass_on_the_pixel_worst_cases(seed, eps):
    model, data = _model(seed), _masked_set(seed + 10)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    masks = torch.stack([data[i]["mask"] for i in range(len(data))])
    patches = torch.nn.functional.max_pool2d(masks, 16).flatten(1)  # 4 x 4 patch targets
    problem = AttackProblem(model, images, patches, data.labels, eps / 255, "score", masks)
    budget = AttackBudget(member_generators=member_generators(MEMBERS, seed))
    result = attack_standard_per_metric(problem, budget, MEMBERS)
    with torch.no_grad():
        fresh = model.anomaly_map(model(result.pixel, with_attention=False).logits)
    assert result.pixel_maps is not None
    assert torch.equal(result.pixel_maps, fresh)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_rows_are_those_of_scoring_the_pixel_worst_cases_again(seed, monkeypatch):
    model, data = _model(seed), _masked_set(seed + 20, n=10)
    kwargs = dict(epsilons=(0, 8), attacks=("standard",), standard_members=MEMBERS,
                  batch_size=4, seed=seed, progress=False)
    kept = evaluate(model, data, **kwargs)
    original = standard.attack_standard_per_metric

    def without_maps(*args, **kw):
        result = original(*args, **kw)
        result.pixel_maps = None  # the evaluator then scores the pixel worst cases again
        return result

    monkeypatch.setattr("patchguard.adversarial.attacks.attack_standard_per_metric",
                        without_maps)
    again = evaluate(model, data, **kwargs)
    assert kept[1]["pixel_auroc"] is not None
    # the pixel worst cases come from more than one member, so maps of several passes mix
    assert kept[1]["pixel_worst_from"].count(",") >= 1 or seed != 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in DIAGNOSTIC}  # noqa: E731
                          for r in rows]
    assert strip(kept) == strip(again)
