import pytest
import torch
from scipy.ndimage import gaussian_filter

from patchguard.models.patchguard import PatchGuard, gaussian_blur, gaussian_kernel1d

from helpers.models import TINY_SIZE, tiny_model


@pytest.mark.parametrize("feature_layers", [[3], [2, 4]])
def test_output_shapes(feature_layers):
    model = tiny_model(feature_layers=feature_layers)
    out = model(torch.rand(2, 3, TINY_SIZE, TINY_SIZE))
    n = (TINY_SIZE // 16) ** 2
    assert out.logits.shape == (2, n)
    assert [a.shape for a in out.attentions] == [(2, 2, n, n)] * 2
    assert model.image_score(out.logits).shape == (2,)
    assert model.anomaly_map(out.logits).shape == (2, TINY_SIZE, TINY_SIZE)


def test_attention_matches_explicit_softmax_and_excludes_prefix_tokens():
    """Captured attention equals softmax(q k^T * scale) computed by hand, patch block only."""
    model = tiny_model().eval()
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    out = model(x)
    vit = model.feature_extractor.pretrained_model
    embedded = vit._pos_embed(vit.patch_embed((x - model.mean) / model.std))
    tokens = vit.norm_pre(vit.patch_drop(embedded))
    tokens = vit.blocks[0](tokens)
    attn = vit.blocks[1].attn
    h = vit.blocks[1].norm1(tokens)
    b, t, c = h.shape
    qkv = attn.qkv(h).reshape(b, t, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    full = (qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale).softmax(-1)
    torch.testing.assert_close(full.sum(-1), torch.ones(b, attn.num_heads, t))
    prefix = vit.num_prefix_tokens
    expected = full[:, :, prefix:, prefix:]
    torch.testing.assert_close(out.attentions[0], expected, rtol=1e-5, atol=1e-6)


def test_register_tokens_are_all_dropped():
    model = PatchGuard("vit_small_patch14_reg4_dinov2", image_size=28, feature_layers=[2],
                       reg_layers=[1, 2], dsc_hidden=32)
    assert model.feature_extractor.num_prefix_tokens == 5
    out = model(torch.rand(1, 3, 28, 28))
    assert out.logits.shape == (1, 4)
    assert out.attentions[0].shape[-2:] == (4, 4)


def test_regularised_layers_only_change_nothing_in_outputs():
    """Capturing attention must not change the logits (timm's fused path still computes them)."""
    model = tiny_model().eval()
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    with_attention = model(x, with_attention=True).logits
    without = model(x, with_attention=False).logits
    torch.testing.assert_close(with_attention, without)
    blocks = model.feature_extractor.pretrained_model.blocks
    for layer in model.feature_extractor.reg_layers:
        attn = blocks[layer - 1].attn
        assert attn.fused_attn  # timm's fused kernel still computes the block output
        assert "forward" not in vars(attn)  # the forward method is timm's own, not replaced


def test_attention_stays_float32_under_bf16_autocast():
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, TINY_SIZE, TINY_SIZE))
    assert all(a.dtype == torch.float32 for a in out.attentions)
    assert torch.isfinite(out.logits).all()


def test_feature_layers_concatenate_in_the_given_order():
    model = tiny_model(feature_layers=[4, 2]).eval()
    x = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    features, _ = model.feature_extractor((x - model.mean) / model.std, with_attention=False)
    reference = tiny_model(feature_layers=[2, 4]).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    ref_features, _ = reference.feature_extractor((x - model.mean) / model.std, False)
    swapped = torch.cat([ref_features[..., 64:], ref_features[..., :64]], -1)
    torch.testing.assert_close(features, swapped)
    with pytest.raises(ValueError, match="distinct"):
        tiny_model(feature_layers=[3, 3])


def test_blocks_keep_timm_call_signature():
    """timm blocks pass attn_mask / is_causal to attention; our capture must not intercept calls."""
    model = tiny_model()
    block = model.feature_extractor.pretrained_model.blocks[1]
    tokens = torch.rand(1, 17, 64)
    extractor = model.feature_extractor
    extractor._capturing = True
    try:
        out = block.attn(tokens, attn_mask=None, is_causal=False)
    finally:
        extractor._capturing = False
    assert out.shape == tokens.shape
    assert extractor._captured[2].shape == (1, 17, 3 * 64)


def test_image_score_is_mean_of_top_k():
    model = tiny_model(top_k=3)
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 4.0, -1.0]])
    assert model.image_score(logits).item() == pytest.approx(4.0)


def test_smoothing_matches_scipy():
    maps = torch.rand(2, 40, 33, dtype=torch.float64).float()
    ours = gaussian_blur(maps, gaussian_kernel1d(6.0, 7)).numpy()
    reference = gaussian_filter(maps.numpy().astype("float64"), sigma=(0, 6, 6), radius=(0, 7, 7))
    assert abs(ours - reference).max() < 1e-5


def test_anomaly_map_upsamples_then_smooths():
    model = tiny_model()
    logits = torch.zeros(1, 16)
    logits[0, 5] = 10.0
    amap = model.anomaly_map(logits)[0]
    peak = divmod(int(amap.argmax()), TINY_SIZE)
    assert 16 <= peak[0] < 32 and 16 <= peak[1] < 32  # inside patch (1, 1)


def test_input_is_normalised_inside_the_model():
    model = tiny_model()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(ValueError, match="expected 64x64"):
        model(torch.rand(1, 3, 32, 32))


def test_bad_layers_are_refused():
    # test_vit has 6 blocks: the message names the key, the value and the range.
    with pytest.raises(ValueError, match=r"reg_layers \(--reg-layers\) = \[7\]: entry 7 must be "
                       r"an integer in \[1, 6\]"):
        tiny_model(reg_layers=[7])
    with pytest.raises(ValueError, match="feature_layers .* must hold distinct entries"):
        tiny_model(feature_layers=[3, 3])
    with pytest.raises(ValueError, match="dsc_heads = 3: must be a positive divisor of the "
                       "discriminator's width 64"):
        tiny_model(dsc_heads=3)


@pytest.mark.slow
def test_compile_backbone_keeps_outputs_and_attention_capture():
    model = tiny_model().eval()
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    compiled = model.compile_backbone(backend="eager")  # the eager backend keeps the test fast
    assert compiled == [1]  # blocks 2 and 3 are regularised and must stay eager
    out = model(x)
    torch.testing.assert_close(out.logits, reference.logits)
    for a, b in zip(out.attentions, reference.attentions):
        torch.testing.assert_close(a, b)
    assert "_orig_mod" not in "".join(model.state_dict())  # checkpoints keep their keys


@pytest.mark.slow
def test_compile_attack_gives_the_eager_logits_and_input_gradients():
    """The compiled no-attention forward (attacks, predict) matches the eager network, also with
    compiled training blocks inside it; the training forward still captures attention."""
    model, reference = tiny_model(dsc_dropout=0.0), tiny_model(dsc_dropout=0.0)
    model.compile_backbone(backend="eager")
    model.compile_attack(backend="eager")  # the eager backend: dispatch and graph, fast
    x = torch.rand(3, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    for net in (model, reference):
        net.requires_grad_(False)  # as in an attack
    grads = []
    for net in (model, reference):
        adversarial = x.clone().requires_grad_(True)
        logits = net(adversarial, with_attention=False).logits
        grads.append((logits, torch.autograd.grad(logits.square().sum(), adversarial)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert len(model(x).attentions) == 2
    torch.testing.assert_close(model.predict(x)[1], reference.predict(x)[1], rtol=1e-5, atol=1e-6)
    assert "_orig_mod" not in "".join(model.state_dict())


def test_every_backbone_block_uses_fused_attention():
    """The regularised blocks' attention comes from the captured qkv; timm's attention call
    itself stays the fused kernel in every block (the naive reference materialises it)."""
    model = tiny_model()
    assert all(block.attn.fused_attn for block in model.feature_extractor.pretrained_model.blocks)
