"""Importing the original implementation's state dicts (its key names, built here by hand)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch

from patchguard.cli.tools import COMMANDS, register
from patchguard.inference.detector import load
from patchguard.models.original import convert_original_state_dict
from patchguard.models.patchguard import PatchGuard
from patchguard.utils.checkpoint import load_checkpoint

WIDTH, HIDDEN, PATCHES, BLOCKS = 64, 32, 16, 2  # test_vit at 64 px: 4 x 4 patches of width 64


def original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as the original's PatchGuard module saves it."""
    torch.manual_seed(seed)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=64)
    state = {f"feature_extractor.pretrained_model.{k}": v.clone()
             for k, v in vit.state_dict().items()}
    state["discriminator.positional_encodings"] = torch.randn(PATCHES, WIDTH)
    for i in range(BLOCKS):
        block = f"discriminator.transformer_encoder.{i}."
        shapes = {
            "layer_norm_1.weight": (WIDTH,), "layer_norm_1.bias": (WIDTH,),
            "attn.in_proj_weight": (3 * WIDTH, WIDTH), "attn.in_proj_bias": (3 * WIDTH,),
            "attn.out_proj.weight": (WIDTH, WIDTH), "attn.out_proj.bias": (WIDTH,),
            "linear.0.weight": (HIDDEN, WIDTH), "linear.0.bias": (HIDDEN,),
            "linear.3.weight": (WIDTH, HIDDEN), "linear.3.bias": (WIDTH,),
        }
        for name, shape in shapes.items():
            state[block + name] = torch.randn(shape) * 0.1
    state["discriminator.output_layer.0.weight"] = torch.randn(1, WIDTH) * 0.1
    state["discriminator.output_layer.0.bias"] = torch.zeros(1)
    return state


def direct_model(original: dict[str, torch.Tensor]) -> PatchGuard:
    """Our model with the same weights, assigned module by module (no key mapping involved)."""
    model = PatchGuard("test_vit", 64, feature_layers=[6], reg_layers=[6], dsc_layers=BLOCKS,
                       dsc_heads=4, dsc_hidden=HIDDEN).eval()
    prefix = "feature_extractor.pretrained_model."
    model.feature_extractor.pretrained_model.load_state_dict(
        {k[len(prefix):]: v for k, v in original.items() if k.startswith(prefix)})
    disc = model.discriminator
    with torch.no_grad():
        disc.positional_encodings.copy_(original["discriminator.positional_encodings"])
        for i, block in enumerate(disc.transformer_encoder):
            get = lambda name: original[f"discriminator.transformer_encoder.{i}.{name}"]  # noqa: E731,B023
            block.norm.weight.copy_(get("layer_norm_1.weight"))
            block.norm.bias.copy_(get("layer_norm_1.bias"))
            block.attention.in_proj_weight.copy_(get("attn.in_proj_weight"))
            block.attention.in_proj_bias.copy_(get("attn.in_proj_bias"))
            block.attention.out_proj.weight.copy_(get("attn.out_proj.weight"))
            block.attention.out_proj.bias.copy_(get("attn.out_proj.bias"))
            block.mlp[0].weight.copy_(get("linear.0.weight"))
            block.mlp[0].bias.copy_(get("linear.0.bias"))
            block.mlp[3].weight.copy_(get("linear.3.weight"))
            block.mlp[3].bias.copy_(get("linear.3.bias"))
        disc.output_layer[0].weight.copy_(original["discriminator.output_layer.0.weight"])
        disc.output_layer[0].bias.copy_(original["discriminator.output_layer.0.bias"])
    return model


def test_converted_model_loads_strict_and_matches_direct_model():
    original = original_state_dict()
    converted = convert_original_state_dict(original, backbone="test_vit", image_size=64)
    config = converted["config"]
    assert (config["dsc_layers"], config["dsc_hidden"], config["dsc_heads"]) == (BLOCKS, HIDDEN, 4)
    assert config["feature_layers"] == [6] and config["image_size"] == 64
    ours = PatchGuard.from_config(type("C", (), config)).eval()
    ours.load_state_dict(converted["model"], strict=True)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = direct_model(original)(images, with_attention=False).logits
        got = ours(images, with_attention=False).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inferred_image_size_and_wrapped_payloads():
    original = original_state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in original.items()}}
    converted = convert_original_state_dict(wrapped, backbone="test_vit", image_size=None)
    assert converted["config"]["image_size"] == 64


def test_unused_missing_and_mismatched_keys_are_listed():
    original = original_state_dict()
    original["discriminator.extra_head.weight"] = torch.zeros(3)
    del original["discriminator.transformer_encoder.1.linear.3.bias"]
    with pytest.raises(ValueError) as error:
        convert_original_state_dict(original, backbone="test_vit", image_size=64)
    message = str(error.value)
    assert "unused keys: discriminator.extra_head.weight" in message
    assert "missing keys: discriminator.transformer_encoder.1.mlp.3.bias" in message
    with pytest.raises(ValueError, match="image size 64"):
        convert_original_state_dict(original_state_dict(), backbone="test_vit", image_size=96)
    with pytest.raises(ValueError, match="wrong backbone"):
        convert_original_state_dict(original_state_dict(), backbone="vit_tiny_patch16_224",
                                    image_size=64)


def test_cli_import_checkpoint_then_predict(tmp_path: Path, capsys):
    path = tmp_path / "patchguard_mvtec_metal_nut.pth"
    torch.save(original_state_dict(), path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    out = tmp_path / "imported.pt"
    args = parser.parse_args(["import-checkpoint", "--original", str(path), "--output",
                              str(out), "--backbone", "test_vit", "--image_size", "64"])
    assert COMMANDS[args.verb](args) == 0
    state = load_checkpoint(out)
    assert state["config"]["class_name"] == "metal_nut"
    assert state["config"]["dataset"] == "mvtec"
    detector = load(out, device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = detector.predict(images)
    scores, maps = direct_model(original_state_dict()).predict(images)
    torch.testing.assert_close(torch.from_numpy(result.scores), scores)
    torch.testing.assert_close(torch.from_numpy(result.maps), maps)
    args = parser.parse_args(["info", "--checkpoint", str(out)])
    capsys.readouterr()
    assert COMMANDS["info"](args) == 0
    assert "original PatchGuard" in capsys.readouterr().out
