import pytest
import torch
from torch import nn

from patchguard.adversarial.ascent import input_gradients_only
from patchguard.adversarial.problem import AttackProblem
from patchguard.adversarial.training_attacks import pgd_attack
from patchguard.models import kernels
from patchguard.models.kernels import CpuLinear, use_cpu_linear
from patchguard.models.patchguard import DiscriminatorBlock, self_attention

from helpers.models import TINY_SIZE, tiny_model

needs_onednn = pytest.mark.skipif(not kernels.ENABLED, reason="no oneDNN in this build")


def _float64_reference(x, weight, bias, grad):
    """Output and gradients of a linear layer in float64 by plain autograd (the reference)."""
    x, weight, bias = (t.detach().double().requires_grad_(True) for t in (x, weight, bias))
    out = x @ weight.T + bias
    out.backward(grad.double())
    return out, x.grad, weight.grad, bias.grad


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 24), (3, 11, 24)])
def test_cpu_linear_matches_float64_forward_and_backward(shape):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    use_cpu_linear(layer)
    assert type(layer) is CpuLinear
    x = torch.randn(*shape, requires_grad=True)
    assert kernels.use_onednn(x, layer.weight)
    out = layer(x)
    assert out.grad_fn is not None and "OneDnn" in type(out.grad_fn).__name__
    grad = torch.randn_like(out)
    out.backward(grad)
    expected = _float64_reference(x, layer.weight, layer.bias, grad)
    for got, want in zip((out, x.grad, layer.weight.grad, layer.bias.grad), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_cpu_linear_non_contiguous_input_and_frozen_weight():
    torch.manual_seed(0)
    layer = nn.Linear(8, 5)
    use_cpu_linear(layer)
    layer.requires_grad_(False)
    x = torch.randn(6, 4, 8).transpose(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x)
    expected = 2 * (x.detach() @ layer.weight.T + layer.bias) @ layer.weight
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None


def test_other_dtypes_and_autocast_use_f_linear():
    layer = CpuLinear(8, 4)
    x = torch.randn(3, 8)
    assert not kernels.use_onednn(x.double(), layer.weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.use_onednn(x, layer.weight)
        assert layer(x).dtype == torch.bfloat16  # autocast applied, as with nn.Linear


def test_use_cpu_linear_keeps_state_dict_and_hooks():
    model = tiny_model()
    keys = list(model.state_dict())
    assert all(type(m) is not nn.Linear for m in model.modules())  # PatchGuard converts itself
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = list(fresh.state_dict())
    assert use_cpu_linear(fresh) == 2
    assert list(fresh.state_dict()) == before and list(model.state_dict()) == keys
    plain = tiny_model()
    for module in plain.modules():  # the same network with plain nn.Linear layers again
        if type(module) is CpuLinear:
            module.__class__ = nn.Linear
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    out, ref = model.eval()(x), plain.eval()(x)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(out.attentions, ref.attentions):  # the qkv hook still captures attention
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_input_gradients_only_restores_each_flag():
    model = tiny_model()
    head = model.head_parameters()
    head[0].requires_grad_(False)  # e.g. a frozen group: must stay frozen afterwards
    flags = [p.requires_grad for p in model.parameters()]
    with input_gradients_only(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(RuntimeError), input_gradients_only(model):
        raise RuntimeError("restored on errors too")
    assert [p.requires_grad for p in model.parameters()] == flags


def test_every_input_gradient_runs_with_frozen_parameters(monkeypatch):
    """Training PGD and the evaluation attacks' shared gradient both freeze the parameters."""
    model = tiny_model()
    seen = []

    def spy(module, args, kwargs):
        if torch.is_grad_enabled():
            seen.append(any(p.requires_grad for p in module.parameters()))

    model.register_forward_pre_hook(spy, with_kwargs=True)
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    targets = torch.zeros(2, 16)
    pgd_attack(model, x, targets, 8 / 255, 2)
    AttackProblem(model, x, targets, None, 8 / 255, "mask", None).loss_and_grad(x)
    assert seen == [False, False, False]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_self_attention_matches_nn_multihead_attention(training):
    block = DiscriminatorBlock(32, 4, 64, dropout=0.3).train(training)
    x = torch.randn(2, 9, 32, requires_grad=True)
    torch.manual_seed(5)
    expected = block.attention(x, x, x, need_weights=False)[0]
    torch.manual_seed(5)  # same seed: the same attention-dropout draws
    got = self_attention(block.attention, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(got)
    (want,) = torch.autograd.grad(expected, x, grad)
    (have,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
