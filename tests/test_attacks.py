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


class _Recorder(torch.nn.Module):
    """Wraps a model and records every input the attack feeds it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x, with_attention=True):
        self.inputs.append(x.detach().clone())
        return self.model(x, with_attention=with_attention)


def test_pgd_default_step_is_2_5_eps_over_steps_without_random_start():
    recorder = _Recorder(tiny_model().eval())
    x = torch.full((1, 3, TINY_SIZE, TINY_SIZE), 0.5)
    eps, steps = 8 / 255, 10
    pgd_attack(recorder, x, torch.zeros(1, 16), eps, steps)
    assert len(recorder.inputs) == steps
    assert torch.equal(recorder.inputs[0], x)  # no random start
    first_step = (recorder.inputs[1] - x).abs()
    moved = first_step[first_step > 0]
    assert moved.numel() > 0.9 * x.numel()
    torch.testing.assert_close(moved, torch.full_like(moved, 2.5 * eps / steps))


def test_zero_epsilon_returns_input():
    model = tiny_model()
    x = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    assert torch.equal(pgd_attack(model, x, torch.zeros(1, 16), 0.0, 10), x)
