"""Our APGD against an independent implementation: torchattacks' APGD (needs torchattacks).

The image score s is wrapped as two-class logits [-s, s]: the cross-entropy of label y is then
an increasing function of our ``score`` objective for each image, so both attacks follow the
same signed gradients and keep the same best points, and their results compare on our objective.
torchattacks is installed for this test only, without its dependencies (``.ci/run``); the test is
skipped where it is not importable.
"""

import pytest
import torch

from helpers.attacks import run_attack
from helpers.models import TINY_SIZE, tiny_model

torchattacks = pytest.importorskip("torchattacks")

EPS = 8 / 255


class _TwoClass(torch.nn.Module):
    """Image score as two-class logits [-s, s] (class 1 = anomalous)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        score = self.model.image_score(self.model(x, with_attention=False).logits)
        return torch.stack([-score, score], dim=1)


def _score_objective(model, x, labels):
    with torch.no_grad():
        score = model.image_score(model(x, with_attention=False).logits)
    return (1 - 2 * labels.float()) * score  # + for normal, - for anomalous, as score_loss


def test_cross_entropy_of_the_wrapper_is_monotone_in_the_score_objective():
    model = tiny_model().eval()
    torch.manual_seed(0)
    x = torch.rand(6, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    objective = _score_objective(model, x, labels)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(_TwoClass(model)(x), labels, reduction="none")
    # CE = log(1 + exp(2 * objective)): the same order, image by image.
    torch.testing.assert_close(ce, torch.nn.functional.softplus(2 * objective))


@pytest.mark.slow
@pytest.mark.parametrize("steps", [10, 30])
def test_apgd_is_at_least_as_strong_as_the_reference_at_equal_budget(steps):
    model = tiny_model().eval()
    torch.manual_seed(3)
    n = 8
    x = torch.rand(n, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.tensor([1, 0] * (n // 2))
    targets = labels[:, None].float().expand(n, 16).clone()
    ours, reference = [], []
    for seed in range(2):
        _, loss = run_attack("apgd", model, x, targets, labels, EPS, steps, objective="score",
                             generator=torch.Generator().manual_seed(seed))
        ours.append(loss)
        attack = torchattacks.APGD(_TwoClass(model), eps=EPS, steps=steps, seed=seed, loss="ce")
        _, adv = attack.perturb(x, labels, best_loss=True)  # the best-loss (not success) mode
        assert (adv - x).abs().max() <= EPS + 1e-6
        reference.append(_score_objective(model, adv, labels))
    ours, reference = torch.stack(ours).mean(0), torch.stack(reference).mean(0)
    # Same or better on average over images and seeds, up to 1 % (single images vary with the
    # random start). On this random tiny model the two agree to 0.3 %; a weaker schedule shows
    # on trained models (docs/evaluation.md, "APGD step count": 4 % below at 20 steps before the
    # fix).
    assert ours.mean() >= 0.99 * reference.mean()
