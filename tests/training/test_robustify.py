"""Robust backbone fine-tuning without labels: it makes a tiny model's features measurably more
stable, writes a backbone that training takes, refuses to overwrite, keeps what is done on
Ctrl-C, is deterministic, and the preset step is cached and skipped by the twin."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from patchguard.cli import main
from patchguard.models.factory import build_model
from patchguard.training import robustify as rb
from patchguard.utils.checks import InputError

from helpers.models import TINY_BACKBONE, TINY_SIZE, tiny_config


def _settings(**kwargs) -> rb.RobustifySettings:
    values = dict(backbone=TINY_BACKBONE, pretrained=False, image_size=TINY_SIZE,
                  feature_layers=[3], epsilon=8.0, steps=2, epochs=4, batch_size=4, lr=1e-3,
                  holdout=3, eval_epsilons=[8.0], eval_steps=3)
    values.update(kwargs)
    return rb.RobustifySettings(**values)


def test_feature_attack_stays_in_the_ball_and_moves_features_more_than_noise():
    torch.manual_seed(0)
    model, _ = rb.feature_model(_settings())
    images = torch.rand(3, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        clean = model(images)
    eps = 4 / 255
    attacked = rb.feature_attack(model, images, clean, eps, 5, torch.Generator().manual_seed(0))
    assert (attacked - images).abs().max() <= eps + 1e-6
    assert attacked.min() >= 0 and attacked.max() <= 1
    noise = (images + eps * torch.sign(torch.randn_like(images))).clamp(0, 1)
    with torch.no_grad():
        moved = (model(attacked) - clean).norm()
        random = (model(noise) - clean).norm()
    assert moved > random
    assert all(p.grad is None for p in model.parameters())  # input gradients only


def test_robustify_reduces_the_feature_shift_and_training_takes_the_file(tiny_data, tmp_path):
    out = tmp_path / "robust.safetensors"
    result = rb.robustify(out, _settings(), dataset_dir=str(tiny_data), class_name="widget",
                          progress=False)
    stability = result.card["feature_stability"]
    assert stability["after"]["8"] < 0.8 * stability["before"]["8"]
    # independently of the card's PGD: on the held-out images, a random-sign perturbation of
    # 8/255 moves the saved backbone's features less (relative norm, in numpy) than the start's
    pool = rb.image_pool("mvtec", str(tiny_data), "widget", [], TINY_SIZE, 3, 0)
    assert result.card["images"]["held_out_images"] == 3 == len(pool.held_out)
    images = pool.held_out.float() / 255
    noisy = (images + 8 / 255 * torch.sign(torch.randn(images.shape,
                                                        generator=torch.Generator().manual_seed(1)))
             ).clamp(0, 1)
    shifts = []
    for weights in (None, str(out)):
        torch.manual_seed(0)  # robustify's own seed: the same random start
        model, _ = rb.feature_model(_settings(backbone_weights=weights))
        with torch.no_grad():
            clean, moved = model(images).numpy(), model(noisy).numpy()
        shifts.append(np.mean([np.linalg.norm(m - c) / np.linalg.norm(c)
                               for c, m in zip(clean, moved)]))
    assert shifts[1] < shifts[0]
    card = json.loads(rb.card_path_for(out).read_text())
    assert card["complete"] and card["optimizer_steps"] == 4 * 2  # 5 images, batch 4
    assert card["settings"]["epsilon"] == 8.0 and card["cpu_seconds"] >= 0
    saved = load_file(str(out))
    config = tiny_config(tiny_data, tmp_path / "run", backbone_weights=str(out),
                         pretrained=True)
    model, source = build_model(config)
    assert str(out) in source
    vit = model.feature_extractor.pretrained_model.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(vit[key], value)
    with pytest.raises(InputError, match="already exists"):
        rb.robustify(out, _settings(), dataset_dir=str(tiny_data), class_name="widget",
                     progress=False)


def test_robustify_is_deterministic_and_reads_extra_folders(tiny_data, tmp_path):
    extra = tmp_path / "photos" / "nested"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(
            extra / f"{i}.png")
    runs = []
    for name in ("a", "b"):
        result = rb.robustify(tmp_path / f"{name}.safetensors", _settings(epochs=1),
                              dataset_dir=str(tiny_data), class_name="widget",
                              extra_images=[str(tmp_path / "photos")], progress=False)
        assert result.card["images"]["extra_folders"] == {str(tmp_path / "photos"): 2}
        runs.append(load_file(str(result.path)))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key])
    with pytest.raises(InputError, match="not a folder"):
        rb.robustify(tmp_path / "c.safetensors", _settings(), extra_images=[str(tmp_path / "x")],
                     progress=False)


def test_ctrl_c_keeps_the_steps_done(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = rb._batch

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rb, "_batch", interrupting)
    out = tmp_path / "partial.safetensors"
    with pytest.raises(KeyboardInterrupt, match="after 2 of 8 steps"):
        rb.robustify(out, _settings(), dataset_dir=str(tiny_data), class_name="widget",
                     progress=False)
    card = json.loads(rb.card_path_for(out).read_text())
    assert card["complete"] is False and card["optimizer_steps"] == 2
    assert load_file(str(out))  # the weights of those steps


def test_preset_step_is_cached_and_the_twin_skips_it(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path / "cache"))
    config = tiny_config(tiny_data, tmp_path / "run", robustify_epsilon=8.0, robustify_epochs=1,
                         head="knn")
    first = rb.robust_backbone_for(config, progress=False)
    assert first.backbone_weights and first.backbone_weights.startswith(str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(rb, "robustify", lambda *a, **k: calls.append(1))
    again = rb.robust_backbone_for(config, progress=False)
    assert again.backbone_weights == first.backbone_weights and not calls
    other = rb.robust_backbone_for(dataclasses.replace(config, robustify_steps=1),
                                   progress=False)
    assert calls  # other settings, another fine-tuning
    twin = dataclasses.replace(config, adv_train=False)
    assert rb.robust_backbone_for(twin, progress=False) is twin
    assert other is not None


def test_cli_verb_writes_the_backbone_and_its_card(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["robustify", "--dataset-dir", str(tiny_data), "--class-name", "widget",
                 "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
                 "--feature-layers", "3", "--epochs", "1", "--holdout", "3",
                 "--eval-epsilons", "8", "--eval-steps", "2", "--output", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "feature shift at 8/255" in text and out.is_file()
    assert main(["robustify", "--dataset-dir", str(tiny_data), "--class-name", "widget",
                 "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
                 "--output", str(tmp_path / "bad.pt"), "--quiet"]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_one_command_runs_the_preset_and_its_twin_skips_the_fine_tuning(tiny_data, tmp_path,
                                                                         monkeypatch):
    import patchguard

    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path / "cache"))
    tiny = dict(dataset_dir=str(tiny_data), class_name="widget", backbone=TINY_BACKBONE,
                pretrained=False, image_size=TINY_SIZE, feature_layers=[3], reg_layers=[2, 3],
                reg_coefficients=[0.01, 0.05], robustify_images=[], robustify_epochs=1,
                epochs=1, batch_size=4, steps_train=1, dsc_hidden=32, workers=0, device="cpu")
    last = patchguard.train(preset="robust", output_dir=str(tmp_path / "robust"),
                            progress=False, **tiny)
    cached = sorted((tmp_path / "cache" / "robust_backbones").glob("widget-*.safetensors"))
    assert len(cached) == 1
    model, state = patchguard.load_model(last)
    assert state["config"]["head"] == "knn"
    assert state["config"]["backbone_weights"] == str(cached[0])
    saved = load_file(str(cached[0]))
    vit = model.feature_extractor.pretrained_model.state_dict()
    assert all(torch.equal(vit[k], v) for k, v in saved.items())
    twin = patchguard.train(preset="robust", adv_train=False,
                            output_dir=str(tmp_path / "twin"), progress=False, **tiny)
    _, twin_state = patchguard.load_model(twin)
    assert twin_state["config"]["backbone_weights"] is None
    assert len(list((tmp_path / "cache" / "robust_backbones").iterdir())) == 2  # file + card
