import json

import numpy as np
import pytest
from PIL import Image

from patchguard.evaluation.evaluator import Predictions
from patchguard.evaluation.report.panels import heatmap_overlay, save_panels
from patchguard.evaluation.report.plots import plot_robustness, plot_training_log


def test_overlay_colours_hot_regions_and_outlines_the_mask():
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:8, :8] = 1.0
    mask = np.zeros((32, 32), bool)
    mask[16:24, 16:24] = True
    out = heatmap_overlay(image, heat, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[2, 2, 0] > out[30, 2, 0]  # hot = red end of the jet colour map
    assert (out[16, 16:24] == [0, 255, 0]).all()  # green outline on the mask border
    assert not (out[20, 20] == [0, 255, 0]).all()  # interior not painted


def test_save_panels_shared_scale_and_sheet(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    masks = np.zeros((3, 16, 16), bool)
    masks[1, 4:8, 4:8] = True
    paths = ["t/good/a.png", "t/bad/b.png", "t/bad/c.png"]
    labels = np.array([0, 1, 1])
    clean = Predictions(np.zeros(3), labels, maps, masks, paths, images)
    attacked = Predictions(np.ones(3), labels, maps + 1.0, masks, paths, images)
    written = save_panels(clean, tmp_path, attacked)
    assert len(written) == 4 and written[-1].name == "contact_sheet.png"
    assert Image.open(written[0]).size == (5 * 16, 16)
    assert Image.open(written[-1]).size == (5 * 16, 3 * 16)


def test_plots_are_written(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "loss": 3.0 / e, "clean": 1.0 / e,
                                       "pseudo": 2.0 / e, "images_per_s": 5.0}) + "\n"
                           for e in (1, 2, 3)))
    png = plot_training_log(log, tmp_path / "curves.png")
    assert Image.open(png).size[0] > 500
    rows = [{"class_name": c, "adv_train": adv, "attack": a, "epsilon": e,
             "image_auroc": 0.9, "pixel_auroc": None}
            for c in ("x", "y") for adv in (True, False) for a, e in (("clean", 0.0), ("pgd", 8.0))]
    assert Image.open(plot_robustness(rows, tmp_path / "r.png")).size[0] > 500


def test_save_panels_refuses_predictions_without_their_images(tmp_path):
    maps = np.zeros((1, 16, 16), np.float32)
    clean = Predictions(np.zeros(1), np.zeros(1), maps, maps > 0, ["t/good/a.png"])
    with pytest.raises(ValueError, match="keep_images=True"):
        save_panels(clean, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
