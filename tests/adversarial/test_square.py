"""Square Attack: the paper's schedule, query counting, determinism, and what it must break."""

import pytest
import torch

from patchguard.adversarial.objectives import OBJECTIVES
from patchguard.adversarial.square import DEFAULT_P_INIT, square_fraction, square_side
from patchguard.evaluation.metrics import auroc

from helpers.attacks import attack_batch, objective_value, run_attack
from helpers.models import TINY_SIZE, QuantisedInput, tiny_model

EPS = 8 / 255


def test_square_fraction_follows_the_paper_schedule_for_10000_queries():
    # Paper: p halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
    expected = {1: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16, 1000: 16,
                1001: 32, 2001: 64, 4001: 128, 6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for iteration, divisor in expected.items():
        assert square_fraction(iteration, 10_000, 0.8) == pytest.approx(0.8 / divisor)


def test_square_fraction_rescales_other_budgets():
    # 1000 queries: iteration i counts as 10 i of 10 000, so the first halving is after i = 1.
    assert square_fraction(1, 1000, 0.1) == pytest.approx(0.1)
    assert square_fraction(2, 1000, 0.1) == pytest.approx(0.05)
    assert square_fraction(5, 1000, 0.1) == pytest.approx(0.05)
    assert square_fraction(6, 1000, 0.1) == pytest.approx(0.025)
    assert square_fraction(801, 1000, 0.1) == pytest.approx(0.1 / 512)
    # 20 000 queries: twice as slow.
    assert square_fraction(21, 20_000, 0.1) == pytest.approx(0.1)  # 10.5 of 10 000
    assert square_fraction(22, 20_000, 0.1) == pytest.approx(0.05)


def test_square_side_is_the_rounded_root_of_the_area_within_the_image():
    assert square_side(0.05, 64, 64) == 14  # sqrt(204.8) = 14.3
    assert square_side(0.05, 224, 224) == 50  # sqrt(2508.8) = 50.09
    assert square_side(1e-6, 64, 64) == 1
    assert square_side(2.0, 64, 64) == 64


class _Recorder(torch.nn.Module):
    """Wraps a PatchGuard model and records every input the attack feeds it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []
        self.image_score, self.anomaly_map = model.image_score, model.anomaly_map

    def forward(self, x, with_attention=True):
        self.inputs.append(x.detach().clone())
        return self.model(x, with_attention=with_attention)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_square_with_each_objective_stays_on_the_ball_and_only_improves(objective):
    recorder = _Recorder(tiny_model().eval())
    x, targets, labels, masks = attack_batch()
    adv, loss = run_attack("square", recorder, x, targets, labels, EPS, 0, objective=objective,
                           masks=masks, generator=torch.Generator().manual_seed(0), queries=60)
    model = recorder.model
    start = objective_value(model, objective, recorder.inputs[0], targets, labels, masks)
    after = objective_value(model, objective, adv, targets, labels, masks)
    torch.testing.assert_close(loss, after)  # the reported loss is the objective at the result
    assert (after >= start).all() and (after > start).any()
    # Every pixel sits on a vertex of the ball, or at 0 or 1 where the vertex lies outside.
    at_vertex = ((adv - x).abs() - EPS).abs() < 1e-6
    clipped = (adv < 1e-7) | (adv > 1 - 1e-7)
    assert (at_vertex | clipped).all()
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


class _Flat(torch.nn.Module):
    """A model whose output never changes: no proposal is ever accepted. Records calls."""

    patch_size = 16

    def __init__(self):
        super().__init__()
        self.inputs, self.grad_enabled, self.training_flags = [], [], []

    def forward(self, x, with_attention=False):
        self.inputs.append(x.clone())
        self.grad_enabled.append(torch.is_grad_enabled())
        self.training_flags.append(self.training)
        return type("Out", (), {"logits": torch.zeros(x.shape[0], 16)})()


def test_square_counts_queries_queries_without_gradients_in_eval_mode():
    model = _Flat().train()
    x, targets, labels, _ = attack_batch()
    run_attack("square", model, x, targets, labels, EPS, 0, queries=25, restarts=2,
               generator=torch.Generator().manual_seed(0))
    assert len(model.inputs) == 2 * 25  # initial query + 24 proposals, per restart
    assert all(batch.shape == x.shape for batch in model.inputs)
    assert not any(model.grad_enabled) and not any(model.training_flags)
    assert model.training  # the caller's mode is restored


def test_square_starts_with_vertical_stripes_and_proposes_one_square():
    model = _Flat()
    torch.manual_seed(0)
    x = torch.rand(3, 3, TINY_SIZE, TINY_SIZE) * 0.5 + 0.25  # no clipping at 0 or 1
    queries = 40
    run_attack("square", model, x, torch.zeros(3, 16), None, EPS, 0, queries=queries,
               generator=torch.Generator().manual_seed(1))
    start = model.inputs[0] - x
    torch.testing.assert_close(start.abs(), torch.full_like(x, EPS))
    # Constant down every column: vertical stripes.
    torch.testing.assert_close(start, start[:, :, :1].expand_as(start))
    assert (start[:, :, 0] > 0).any() and (start[:, :, 0] < 0).any()
    for iteration in range(1, queries):
        # Nothing is accepted, so proposal i differs from the start inside one square only.
        changed = (model.inputs[iteration] - model.inputs[0]).abs().amax(dim=1) > 1e-7
        side = square_side(square_fraction(iteration, queries, DEFAULT_P_INIT), TINY_SIZE,
                           TINY_SIZE)
        for image in range(3):
            rows = changed[image].any(dim=1).nonzero()
            cols = changed[image].any(dim=0).nonzero()
            assert rows.numel() > 0, "a proposal always changes something"
            assert rows.max() - rows.min() < side and cols.max() - cols.min() < side
            # One sign per channel in the window: the changed pixels of a channel all moved to
            # the same side of the clean image.
            moved = model.inputs[iteration][image] - x[image]
            flipped = (model.inputs[iteration][image] - model.inputs[0][image]).abs() > 1e-7
            for channel in range(3):
                values = moved[channel][flipped[channel]]
                if values.numel():
                    torch.testing.assert_close(values, torch.full_like(values, values[0].item()))
                    assert abs(abs(values[0].item()) - EPS) < 1e-6


def _square(model, x, targets, labels, seed, queries, restarts=1):
    return run_attack("square", model, x, targets, labels, EPS, 0, objective="score",
                      queries=queries, restarts=restarts,
                      generator=torch.Generator().manual_seed(seed))


def test_square_is_deterministic_under_a_seed():
    model = tiny_model().eval()
    x, targets, labels, _ = attack_batch(seed=2)
    first, again, other = (_square(model, x, targets, labels, s, 30) for s in (3, 3, 4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_square_restarts_never_make_it_weaker():
    model = tiny_model().eval()
    x, targets, labels, _ = attack_batch(seed=4)
    _, one = _square(model, x, targets, labels, 7, 20)
    _, three = _square(model, x, targets, labels, 7, 20, restarts=3)
    assert (three >= one).all()


def _auroc_after(model, labels, adv):
    """Image AUROC of ``model`` on ``adv`` (sklearn-checked metrics.auroc)."""
    with torch.no_grad():
        scores = model.image_score(model(adv, with_attention=False).logits)
    return auroc(labels.numpy(), scores.numpy())


def _scored_batch(n: int = 8, seed: int = 11):
    torch.manual_seed(seed)
    x = torch.rand(n, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.tensor([1, 0] * (n // 2))
    return x, labels[:, None].float().expand(n, 16).clone(), labels


@pytest.mark.slow
def test_square_alone_drives_an_undefended_model_to_near_zero_like_pgd():
    model = tiny_model().eval()
    x, targets, labels = _scored_batch()
    assert _auroc_after(model, labels, x) > 0.5
    pgd, _ = run_attack("pgd", model, x, targets, labels, EPS, 10, objective="score")
    square, _ = _square(model, x, targets, labels, 0, 1000)
    assert _auroc_after(model, labels, pgd) <= 0.1
    assert _auroc_after(model, labels, square) <= 0.1


@pytest.mark.slow
def test_square_breaks_a_gradient_masked_model_where_pgd_fails():
    model = QuantisedInput(tiny_model().eval())  # rounded input: every input gradient is zero
    x, targets, labels = _scored_batch()
    clean = _auroc_after(model, labels, x)
    pgd, pgd_loss = run_attack("pgd", model, x, targets, labels, EPS, 10, objective="score")
    square, square_loss = _square(model, x, targets, labels, 0, 300)
    assert torch.equal(pgd, x)  # zero gradients: PGD never moves
    assert _auroc_after(model, labels, pgd) == clean
    assert _auroc_after(model, labels, square) <= 0.1 < clean
    assert square_loss.mean() > pgd_loss.mean()
