import pytest
import torch

from patchguard.attacks import mask_objective, pgd_attack

from conftest import TINY_SIZE
from test_model import tiny_model


def test_mask_objective_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, -1.0]])
    targets = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    expected = (1.5 - 3.5) + (0.0 - 0.0)
    assert mask_objective(logits, targets).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("epsilon,steps", [(8 / 255, 5), (2 / 255, 3)])
def test_pgd_in_ball_raises_objective_and_spares_parameter_gradients(epsilon, steps):
    model = tiny_model().eval()
    torch.manual_seed(1)
    x = torch.rand(4, 3, TINY_SIZE, TINY_SIZE)
    targets = torch.zeros(4, 16)
    targets[:2, :5] = 1
    adv = pgd_attack(model, x, targets, epsilon, steps)
    assert (adv - x).abs().max() <= epsilon + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before = mask_objective(model(x, with_attention=False).logits, targets)
        after = mask_objective(model(adv, with_attention=False).logits, targets)
    assert after > before
    assert all(p.grad is None for p in model.parameters())


def test_pgd_step_size_is_faithful():
    """One step moves every pixel by alpha = 2.5 * eps / steps (clipped to eps) where unclipped."""
    model = tiny_model().eval()
    x = torch.full((1, 3, TINY_SIZE, TINY_SIZE), 0.5)
    adv = pgd_attack(model, x, torch.zeros(1, 16), 8 / 255, 10)
    delta = (adv - x).abs()
    assert delta.max().item() == pytest.approx(8 / 255, abs=1e-6)
    one = pgd_attack(model, x, torch.zeros(1, 16), 8 / 255, 1, alpha=1 / 255)
    moved = (one - x).abs()
    assert moved[moved > 0].min().item() == pytest.approx(1 / 255, abs=1e-6)


def test_zero_epsilon_returns_input():
    model = tiny_model()
    x = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    assert torch.equal(pgd_attack(model, x, torch.zeros(1, 16), 0.0, 10), x)
