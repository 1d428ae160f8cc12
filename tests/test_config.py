"""The run configuration without a training run: declarations, sections, old flat files and
stored configs, flags and the options table."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest

from patchguard.config import (
    OPTIONS,
    PRESETS,
    SECTIONS,
    TrainConfig,
    build_config,
    flag_arguments,
    load_yaml,
    options_markdown,
)
from patchguard.utils.checks import InputError

# A config as a checkpoint of the version before the sections stored it (flat, in the old
# field order), with one key from a newer version and one value an older version did not check.
OLD_FLAT = {
    "dataset": "mvtec", "dataset_dir": "data/mvtec", "class_name": "bottle",
    "output_dir": "runs/bottle", "image_size": 64, "backbone": "test_vit",
    "backbone_weights": None, "pretrained": False, "feature_layers": [3], "reg_layers": [2, 3],
    "reg_coefficients": [0.01, 0.05], "dsc_layers": 1, "dsc_hidden": 32, "dsc_heads": 4,
    "dsc_dropout": 0.2, "top_k": 3, "map_sigma": 6.0, "map_radius": 7, "epochs": 5,
    "batch_size": 4, "lr": 8e-4, "backbone_lr": None, "weight_decay": 0.01,
    "min_lr_ratio": 0.0125, "warmup_epochs": 0, "adv_train": True, "epsilon_train": 8.0,
    "steps_train": 3, "reg": True, "pseudo_size_scale": 1.0, "val_fraction": 0.0,
    "target_fpr": 0.01, "seed": 0, "workers": 0, "device": "cpu", "bf16": False,
    "save_every": 20, "preset": "paper",
}


def test_every_option_declares_domain_help_and_section():
    for name, spec in OPTIONS.items():
        assert spec.metadata["help"], name
        assert spec.metadata["domain"].text, name
    declared = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert sorted(declared) == sorted(OPTIONS)  # each option in exactly one section
    assert len(declared) == len(set(declared))


def test_old_flat_dict_loads_and_sections_round_trip():
    config = TrainConfig.from_dict(OLD_FLAT)
    assert (config.image_size, config.steps_train, config.workers) == (64, 3, 0)
    # Keys the old dict lacks take their defaults.
    assert config.train_attack == "pgd" and config.rank_weight == 0.0
    sections = config.sections()
    assert set(sections) == {"data", "model", "optimisation", "adversarial", "runtime"}
    assert sections["model"]["backbone"] == "test_vit"
    assert sections["adversarial"]["epsilon_train"] == 8.0
    assert TrainConfig.from_dict(sections) == config
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_stored_config_of_an_old_checkpoint_drops_unknown_and_bad_training_values(caplog):
    stored = {**OLD_FLAT, "from_the_future": 1, "save_every": -3}
    with caplog.at_level(logging.WARNING):
        config = TrainConfig.from_dict(stored, source="old.pt")
    assert config.save_every == 20  # the default, with a warning naming the file and flag
    assert "from_the_future" in caplog.text and "--save-every" in caplog.text
    with pytest.raises(InputError, match="old.pt: stored dsc_hidden"):
        TrainConfig.from_dict({**OLD_FLAT, "dsc_hidden": 0}, source="old.pt")


def test_stored_config_of_the_reference_checkpoint_loads():
    """The config stored by importing the authors' reference model (tests/fixtures)."""
    import torch

    from patchguard.authors.convert import convert_original_state_dict

    from helpers.data import REFERENCE_DIR

    reference = torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)
    payload = convert_original_state_dict(reference["state_dict"], backbone="test_vit",
                                          image_size=64, feature_layers=[6],
                                          reg_layers=[2, 4, 6])
    stored = payload["config"]
    config = TrainConfig.from_dict(stored, source="reference.pt")
    assert (config.backbone, config.image_size, config.dsc_hidden) == ("test_vit", 64, 64)
    assert config.reg_layers == [2, 4, 6] and config.feature_layers == [6]
    assert TrainConfig.from_dict(config.sections(), source="reference.pt") == config


def test_yaml_flat_and_sectioned_give_the_same_config(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("image-size: 64\nlr: 1e-3\nsteps_train: 2\nbackbone: test_vit\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  image-size: 64\n  backbone: test_vit\noptimisation:\n"
                      "  lr: 1e-3\nadversarial:\n  steps_train: 2\n")
    assert load_yaml(flat) == load_yaml(nested)
    config = build_config("paper", load_yaml(nested))
    assert (config.image_size, config.lr, config.steps_train) == (64, 1e-3, 2)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  lr: 1e-3\n")
    with pytest.raises(ValueError, match="'lr' belongs in section 'optimisation'"):
        load_yaml(wrong)


def test_domains_are_checked_with_the_flag_in_the_message():
    with pytest.raises(InputError, match=r"epochs \(--epochs\)"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match=r"reg \(--no-reg\)"):
        TrainConfig(reg="false")
    with pytest.raises(InputError, match=r"train_attack \(--train-attack\)"):
        TrainConfig(train_attack="cw")
    with pytest.raises(InputError, match="dsc_dropout"):  # a YAML-only option: no flag
        TrainConfig(dsc_dropout=1.0)
    with pytest.raises(InputError, match="n-fgsm"):  # a trait of the training attack's entry
        TrainConfig(train_attack="n-fgsm", carry_perturbations=True)
    with pytest.raises(InputError, match="free"):
        TrainConfig(train_attack="free", train_objective="score")


def test_flags_parse_into_the_options():
    parser = argparse.ArgumentParser()
    for flag, kwargs in flag_arguments():
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(["--no-reg", "--bf16", "--reg-layers", "2", "4",
                              "--lr", "0.001", "--train-attack", "free", "--backbone-lr", "0"])
    given = {k: v for k, v in vars(args).items() if v is not None}
    assert given == {"reg": False, "bf16": True, "reg_layers": [2, 4], "lr": 0.001,
                     "train_attack": "free", "backbone_lr": 0.0}
    flags = {flag for flag, _ in flag_arguments()}
    assert "--dsc-hidden" not in flags and "--no-pretrained" in flags and "--epochs" in flags


def test_presets_set_only_known_valid_options():
    for name in PRESETS:
        config = build_config(name)
        for key, value in PRESETS[name].items():
            assert getattr(config, key) == value, (name, key)


def test_options_table_lists_every_option_once_by_section():
    table = options_markdown()
    for name in OPTIONS:
        assert table.count(f"| `{name}` |") == 1, name
    assert table.index("## model") < table.index("| `dsc_hidden` |") < table.index("## optim")
    assert "| `--no-reg` |" in table and "(YAML / API)" in table


def test_committed_options_page_is_generated_from_the_declarations():
    import importlib.util
    from pathlib import Path

    docs = Path(__file__).parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("gen_options", docs / "gen_options.py")
    gen_options = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_options)
    text = gen_options.page()
    assert text.startswith(options_markdown())  # training sections first, evaluation last
    assert (docs / "options.md").read_text(encoding="utf-8") == text, (
        "docs/options.md is out of date: run python docs/gen_options.py")


def test_train_command_line_reads_a_sectioned_yaml_like_a_flat_one(tmp_path):
    from patchguard.cli import parse_args

    flat = tmp_path / "flat.yaml"
    flat.write_text("epochs: 3\nlr: 1e-3\nreg: false\nreg_layers: [2, 4]\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("optimisation:\n  epochs: 3\n  lr: 1e-3\n  reg: false\n"
                      "model:\n  reg_layers: [2, 4]\n")
    a = parse_args(["train", "--config", str(flat)])
    b = parse_args(["train", "--config", str(nested)])
    assert {k: v for k, v in vars(a).items() if k != "config"} == {
        k: v for k, v in vars(b).items() if k != "config"}
    assert (b.epochs, b.lr, b.reg, b.reg_layers) == (3, 1e-3, False, [2, 4])
    # A flag given on the command line still wins over the file.
    assert parse_args(["train", "--config", str(nested), "--epochs", "5"]).epochs == 5
