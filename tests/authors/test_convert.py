"""Importing the original implementation's state dicts: wrapped payloads and every way a file can
fail to match. The authors' layout itself comes from their own model (the reference fixture),
not from key names written here: see test_reference.py for the outputs it must reproduce.
"""

from __future__ import annotations

import pytest
import torch

from patchguard.authors.convert import convert_original_state_dict, names_from_filename

from helpers.data import REFERENCE_DIR

ARGS = dict(backbone="test_vit", feature_layers=[6], reg_layers=[2, 4, 6])


@pytest.fixture(scope="module")
def authors_state() -> dict[str, torch.Tensor]:
    """The authors' tiny model's state dict, as their save_model writes it."""
    reference = torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)
    return reference["state_dict"]


def test_inferred_image_size_and_wrapped_payloads(authors_state):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in authors_state.items()}}
    converted = convert_original_state_dict(wrapped, image_size=None, **ARGS)
    assert converted["config"]["image_size"] == 64  # 16 positional encodings of patch 16
    plain = convert_original_state_dict(authors_state, image_size=64, **ARGS)
    for key, value in plain["model"].items():
        torch.testing.assert_close(converted["model"][key], value, rtol=0, atol=0)


def test_unused_missing_and_mismatched_keys_are_listed(authors_state):
    damaged = dict(authors_state)
    damaged["discriminator.extra_head.weight"] = torch.zeros(3)
    del damaged["discriminator.transformer_encoder.0.linear.3.bias"]
    with pytest.raises(ValueError) as error:
        convert_original_state_dict(damaged, image_size=64, **ARGS)
    message = str(error.value)
    assert "unused keys: discriminator.extra_head.weight" in message
    assert "missing keys: discriminator.transformer_encoder.0.mlp.3.bias" in message
    with pytest.raises(ValueError, match="image size 64 for test_vit .* not 96"):
        convert_original_state_dict(authors_state, image_size=96, **ARGS)
    with pytest.raises(ValueError, match="wrong backbone"):
        convert_original_state_dict(authors_state, image_size=64,
                                    **{**ARGS, "backbone": "vit_tiny_patch16_224"})
    with pytest.raises(ValueError, match=r"dsc_heads \(--dsc-heads\) = 3: does not divide the "
                       "feature width 64"):
        convert_original_state_dict(authors_state, image_size=64, dsc_heads=3, **ARGS)
    with pytest.raises(ValueError, match=r"dsc_heads \(--dsc-heads\) = 0: must be an integer"):
        convert_original_state_dict(authors_state, image_size=64, dsc_heads=0, **ARGS)


def test_names_from_the_originals_file_names():
    assert names_from_filename("patchguard_mvtec_metal_nut.pth") == ("mvtec", "metal_nut")
    assert names_from_filename("x/patchguard_visa_pcb1_pgd10_last_epoch.pth") == ("visa", "pcb1")
    assert names_from_filename("model.pth") == (None, None)
