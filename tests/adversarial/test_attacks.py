import types

import pytest
import torch

from patchguard.adversarial.apgd import apgd_checkpoints
from patchguard.adversarial.attackable import DetectorOutput, as_detector, eval_mode
from patchguard.adversarial.attacks import ATTACKS
from patchguard.adversarial.objectives import (
    OBJECTIVES,
    map_loss,
    mask_loss,
    mask_objective,
    score_loss,
)
from patchguard.adversarial.training_attacks import pgd_attack
from patchguard.evaluation.metrics import auroc

from helpers.attacks import attack_batch, objective_value, run_attack
from helpers.models import TINY_SIZE, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model gains nothing from threads; on a busy 2-core machine they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# --------------------------------------------------------------------------------------------
# Evaluation attacks: run_attack, the per-image objectives and the attack registry
# --------------------------------------------------------------------------------------------

EPS = 8 / 255


def _output(model, logits):
    """The detector output of PatchGuard-like ``model`` for given patch logits."""
    return DetectorOutput(lambda: model.image_score(logits), lambda: model.anomaly_map(logits),
                          logits)


def test_mask_loss_is_the_training_objective_per_image():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, -1.0]])
    targets = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    per_image = mask_loss(DetectorOutput(None, None, logits), targets, torch.tensor([1, 0]), None)
    torch.testing.assert_close(per_image, torch.tensor([1.5 - 3.5, 0.0]))
    assert per_image.sum().item() == pytest.approx(mask_objective(logits, targets).item())


def test_score_loss_raises_normal_and_lowers_anomalous_scores():
    model = tiny_model(top_k=2)
    logits = torch.tensor([[1.0, 5.0, 3.0, 0.0], [1.0, 5.0, 3.0, 0.0]])
    loss = score_loss(_output(model, logits), torch.zeros(2, 4), torch.tensor([0, 1]), None)
    torch.testing.assert_close(loss, torch.tensor([4.0, -4.0]))  # top-2 mean is (5 + 3) / 2


def test_map_loss_uses_masks_and_falls_back_to_upsampled_targets():
    model = tiny_model().eval()
    logits = torch.randn(2, 16)
    maps = model.anomaly_map(logits)
    targets = torch.zeros(2, 16)
    targets[:, 0] = 1  # top-left 16 x 16 pixels
    masks = torch.zeros(2, 1, TINY_SIZE, TINY_SIZE)
    masks[0, :, 40:, 40:] = 1  # image 0 has a mask (differs from its targets), image 1 none
    loss = map_loss(_output(model, logits), targets, torch.ones(2), masks)
    region0 = torch.zeros(TINY_SIZE, TINY_SIZE, dtype=torch.bool)
    region0[40:, 40:] = True
    region1 = torch.zeros(TINY_SIZE, TINY_SIZE, dtype=torch.bool)
    region1[:16, :16] = True
    expected = torch.stack([maps[0][~region0].mean() - maps[0][region0].mean(),
                            maps[1][~region1].mean() - maps[1][region1].mean()])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    without_masks = map_loss(_output(model, logits), targets, torch.ones(2), None)
    torch.testing.assert_close(without_masks[1], expected[1], rtol=1e-4, atol=1e-5)


# The gradient attacks; square (test_square.py) and standard (test_standard.py) have budgets of
# their own that 4 steps do not bound.
GRADIENT_ATTACKS = sorted(set(ATTACKS) - {"square", "standard"})


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_attack_in_ball_raises_objective_and_spares_parameter_gradients(name, objective):
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch()
    generator = torch.Generator().manual_seed(0)
    adv, loss = run_attack(name, model, x, targets, labels, EPS, 4, objective=objective,
                           masks=masks, generator=generator)
    assert adv.shape == x.shape and loss.shape == (4,)
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    clean = objective_value(model, objective, x, targets, labels, masks)
    after = objective_value(model, objective, adv, targets, labels, masks)
    torch.testing.assert_close(loss, after)  # the reported loss is the objective at the result
    assert after.mean() > clean.mean()
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


# run_attack("pgd") against the authors' own PGD images: tests/models/test_reference.py


def test_worst_is_at_least_as_strong_as_each_member_on_every_image():
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch(seed=3)
    members = ["pgd", "apgd", "pgd-rs", "fgsm"]
    adv, worst = run_attack("worst", model, x, targets, labels, EPS, 3, objective="score",
                            masks=masks, generator=torch.Generator().manual_seed(5),
                            members=members)
    # The members, run in the same order from the same seed, see the same random numbers.
    generator = torch.Generator().manual_seed(5)
    member_losses = torch.stack([
        run_attack(name, model, x, targets, labels, EPS, 3, objective="score", masks=masks,
                   generator=generator)[1]
        for name in members
    ])
    assert (worst >= member_losses).all()
    torch.testing.assert_close(worst, member_losses.max(dim=0).values)
    assert (adv - x).abs().max() <= EPS + 1e-6


def test_worst_compares_in_eval_mode_and_restores_the_mode():
    model = tiny_model(dsc_dropout=0.5).train()
    x, targets, labels, masks = attack_batch()
    adv, loss = run_attack("worst", model, x, targets, labels, EPS, 2, members=["pgd", "fgsm"])
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # With dropout active a train-mode loss would be random; the reported one is eval-mode.
    torch.testing.assert_close(loss, objective_value(model.eval(), "mask", adv, targets,
                                                      labels, masks))


def test_eval_mode_restores_a_mixed_train_state_module_by_module():
    model = tiny_model(dsc_dropout=0.5).train()
    frozen = [m for i, m in enumerate(model.modules()) if i % 3 == 1]
    for module in frozen:  # e.g. a frozen backbone part kept in eval mode while training
        module.eval()
    before = [m.training for m in model.modules()]
    assert any(before) and not all(before)
    detector = as_detector(model)
    with eval_mode(detector):
        assert not any(m.training for m in detector.modules())
    assert [m.training for m in model.modules()] == before
    model.eval()
    with eval_mode(detector):
        assert not any(m.training for m in detector.modules())
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["pgd-rs", "apgd"])
def test_restarts_never_make_it_weaker(name):
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch(seed=4)
    _, one = run_attack(name, model, x, targets, labels, EPS, 3, objective="score",
                        restarts=1, generator=torch.Generator().manual_seed(7))
    _, three = run_attack(name, model, x, targets, labels, EPS, 3, objective="score",
                          restarts=3, generator=torch.Generator().manual_seed(7))
    assert (three >= one).all()


def test_pgd_rs_starts_at_random_points_and_keeps_the_step_size():
    recorder = _Recorder(tiny_model().eval())
    x = torch.full((1, 3, TINY_SIZE, TINY_SIZE), 0.5)
    run_attack("pgd-rs", recorder, x, torch.zeros(1, 16), None, EPS, 4, restarts=2,
               generator=torch.Generator().manual_seed(0))
    # Per restart: 4 gradient steps + the last iterate; then one eval-mode scoring of its best.
    assert len(recorder.inputs) == 2 * (4 + 1 + 1)
    first, second = recorder.inputs[0], recorder.inputs[6]
    for start in (first, second):
        offset = start - x
        assert offset.abs().max() <= EPS + 1e-6 and offset.std() > EPS / 4
    assert not torch.equal(first, second)
    step = (recorder.inputs[1] - recorder.inputs[0]).abs()
    # Steps of 2.5 eps / steps, shortened only where the eps ball clips them.
    assert step.max() <= 2.5 * EPS / 4 + 1e-6 and (step > 2.5 * EPS / 4 - 1e-6).any()


def test_score_objective_lowers_image_auroc():
    model = tiny_model().eval()
    torch.manual_seed(11)
    x = torch.rand(8, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    targets = labels[:, None].float().expand(8, 16).clone()
    with torch.no_grad():
        clean = auroc(labels.numpy(), model.image_score(model(x, with_attention=False).logits))
    adv, _ = run_attack("apgd", model, x, targets, labels, EPS, 5, objective="score",
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        attacked = auroc(labels.numpy(), model.image_score(model(adv, with_attention=False).logits))
    assert attacked < clean
    assert attacked < 0.5


def test_apgd_checkpoints_for_100_steps():
    # p: 0, 0.22, then increments max(previous increment - 0.03, 0.06):
    # +0.19 -> 0.41, +0.16 -> 0.57, +0.13 -> 0.70, +0.10 -> 0.80, +0.07 -> 0.87,
    # +0.06 -> 0.93, +0.06 -> 0.99, (+0.06 -> 1.05 > 1 stops). Times 100, ceil: exact integers.
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    # N = 10 in whole periods as the authors' code counts them: first floor(2.2) = 2 steps,
    # then periods floor(1.9)... each at least floor(0.6) -> 1 step: a checkpoint every step.
    assert apgd_checkpoints(10) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    # N = 50: periods 11, 11 - 1 = 10, 9, 8, ... down to 3: 0, 11, 21, 30, 38, 45, 51 > 50.
    assert apgd_checkpoints(50) == [0, 11, 21, 30, 38, 45]


def test_apgd_starts_randomly_and_first_steps_two_epsilon():
    recorder = _Recorder(tiny_model().eval())
    x = torch.full((1, 3, TINY_SIZE, TINY_SIZE), 0.5)
    run_attack("apgd", recorder, x, torch.zeros(1, 16), None, EPS, 2,
               generator=torch.Generator().manual_seed(0))
    start, first = recorder.inputs[0], recorder.inputs[1]
    # A 2 eps signed step from anywhere in the ball lands on its boundary in every pixel.
    torch.testing.assert_close((first - x).abs(), torch.full_like(x, EPS))
    assert (start - x).abs().max() < EPS  # random start strictly inside (almost surely)


def test_zero_epsilon_attacks_return_the_input():
    model = tiny_model().eval()
    x, targets, labels, masks = attack_batch()
    for name in ATTACKS:
        adv, loss = run_attack(name, model, x, targets, labels, 0.0, 3)
        assert torch.equal(adv, x)
        torch.testing.assert_close(loss, objective_value(model, "mask", x, targets, labels, None))


def test_unknown_names_are_rejected():
    model = tiny_model().eval()
    x, targets, labels, _ = attack_batch()
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack("cw", model, x, targets, labels, EPS, 1)
    with pytest.raises(ValueError, match="unknown objective"):
        run_attack("pgd", model, x, targets, labels, EPS, 1, objective="nope")
    with pytest.raises(ValueError, match="members"):
        run_attack("pgd", model, x, targets, labels, EPS, 1, members=["fgsm"])


class _Distance(torch.nn.Module):
    """Toy model whose patch logits are squared distances to a centre inside the eps ball."""

    def __init__(self, centre):
        super().__init__()
        self.centre = centre

    def forward(self, x, with_attention=False):
        distances = ((x - self.centre) ** 2).reshape(x.shape[0], 16, -1).sum(-1)
        return types.SimpleNamespace(logits=distances)


def test_apgd_step_size_halving_converges_where_fixed_steps_oscillate():
    # All-anomalous targets: the mask objective is minus the mean distance, maximal at the centre.
    # Signed steps of a fixed size 2 eps cannot get near it; the halving schedule must.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    centre = x + 0.37 * EPS * (2 * torch.rand_like(x) - 1)
    adv, loss = run_attack("apgd", _Distance(centre), x, torch.ones(2, 16), None, EPS, 100,
                           generator=torch.Generator().manual_seed(0))
    # Measured 0.014 eps with the schedule, 0.22 eps with condition 1 switched off.
    assert (adv - centre).abs().max() < 0.05 * EPS
    assert (loss <= 0).all() and (loss > -1e-5).all()
