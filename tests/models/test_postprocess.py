"""The post-processing component: decisions, masks and heat colours against plain formulas, and
the same thresholds reaching ``predict``, the server's decision and an ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import expit

from patchguard.authors.convert import convert_original_state_dict
from patchguard.models.postprocess import PostProcessor, value_range
from patchguard.utils.checkpoint import save_checkpoint

from helpers.data import REFERENCE_DIR


def test_decisions_masks_and_heat_against_plain_formulas():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50).astype(np.float32)
    maps = rng.normal(size=(3, 8, 8)).astype(np.float32)
    post = PostProcessor(image_threshold=float(scores[7]), pixel_threshold=0.25)
    expected = [float(s) >= float(scores[7]) for s in scores]  # a plain loop, ties anomalous
    assert post.decide(scores).tolist() == expected and expected[7]
    assert post.label(float(scores[7])) == "anomalous"
    np.testing.assert_array_equal(post.masks(maps), maps >= 0.25)
    np.testing.assert_allclose(post.heat(maps), expit(2.0 * (maps.astype(np.float64) - 0.25)),
                               rtol=1e-6)
    np.testing.assert_allclose(PostProcessor().heat(maps), expit(2.0 * maps), rtol=1e-6)
    low, high = value_range(maps)
    assert (low, high) == pytest.approx(tuple(np.percentile(maps, [1.0, 99.9])), rel=1e-6)
    np.testing.assert_allclose(post.heat(maps, (low, high)),
                               np.clip((maps - low) / (high - low), 0, 1), rtol=1e-6)
    # No threshold, no guess; a flag or query value takes over the checkpoint's.
    assert PostProcessor().decide(scores) is None and PostProcessor().label(1.0) is None
    with pytest.raises(ValueError, match="no pixel threshold"):
        PostProcessor().masks(maps)
    assert post.overridden(pixel_threshold=1.0).pixel_threshold == 1.0
    assert post.overridden().image_threshold == post.image_threshold
    checkpoint = {"thresholds": {"image": 0.5, "pixel": None}}
    assert PostProcessor.from_checkpoint(checkpoint) == PostProcessor(0.5, None)


@pytest.fixture
def calibrated(tmp_path):
    """The authors' tiny reference model as a patchguard checkpoint, with thresholds."""
    reference = torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)
    payload = convert_original_state_dict(reference["state_dict"], backbone="test_vit",
                                          image_size=64, feature_layers=[6],
                                          reg_layers=[2, 4, 6])
    scores = reference["image_scores"]
    payload["thresholds"] = {"image": float(scores[2]), "pixel": 0.1, "method": "quantile"}
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(reference["images"]):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            images / f"{i}.png")
    return save_checkpoint(tmp_path / "model.pt", payload), images


@pytest.mark.integration
def test_predict_and_export_carry_the_checkpoints_post_processing(calibrated, tmp_path):
    from patchguard.cli import main
    from patchguard.inference.detector import load

    checkpoint, images = calibrated
    result = load(checkpoint).predict(images)
    threshold = torch.load(checkpoint, weights_only=True)["thresholds"]["image"]
    assert result.decisions.tolist() == [float(s) >= threshold for s in result.scores]
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(images),
                 "--output-dir", str(tmp_path / "out"), "--save-masks", "--device", "cpu",
                 "--quiet"]) == 0
    first_mask = sorted((tmp_path / "out" / "masks").glob("*.png"))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(first_mask)) > 0,
                                  result.maps[0] >= 0.1)

    onnx = pytest.importorskip("onnx")
    from patchguard.inference.export import POSTPROCESS_KEY, export_onnx

    export_onnx(checkpoint, tmp_path / "model.onnx", verify=False)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    stored = json.loads(props[POSTPROCESS_KEY])
    assert (stored["image_threshold"], stored["pixel_threshold"]) == (threshold, 0.1)
