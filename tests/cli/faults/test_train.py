"""``train``: flags and YAML values out of their domain, lost work, resuming, the run folder.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from .common import (
    CLASS,
    MODEL_FLAGS,
    assert_names_key,
    assert_nothing_written,
    assert_refused,
    bomb_png,
    damaged_data,
    digest,
    train_argv,
    write_yaml,
)
from helpers.data import make_mvtec_class
from helpers.models import tiny_config

# ============================================================================ train: flags
# Values outside their domain must be refused before anything is written (the output folder is
# not even created), with a message naming the flag and the value.

TRAIN_BAD_FLAGS = [
    # (id, key, flag values, value named in the message)
    ("T-epochs-neg", "epochs", ["--epochs", "-1"], "-1"),  # before the fixes: generic message
    # T-bs-0 / T-img-0 passed before the fixes only weakly: its one generic message for three keys
    # ("image_size and batch_size must be positive and epochs >= 0") happens to hold a "0".
    ("T-bs-0", "batch_size", ["--batch-size", "0"], "0"),
    ("T-bs-neg", "batch_size", ["--batch-size", "-4"], "-4"),  # before the fixes: generic
    ("T-img-0", "image_size", ["--image-size", "0"], "0"),
    ("T-img-neg", "image_size", ["--image-size", "-64"], "-64"),  # before the fixes: generic
    ("T-lr-neg", "lr", ["--lr", "-1"], "-1"),  # before the fixes: trains (gradient ascent)
    ("T-lr-nan", "lr", ["--lr", "nan"], "nan"),  # before the fixes: fails after training starts
    ("T-lr-inf", "lr", ["--lr", "inf"], "inf"),  # before the fixes: fails after training starts
    ("T-blr-neg", "backbone_lr", ["--backbone-lr", "-1"], "-1"),  # before the fixes: trains
    ("T-blr-nan", "backbone_lr", ["--backbone-lr", "nan"], "nan"),  # before the fixes: late
    ("T-warmup-neg", "warmup_epochs", ["--warmup-epochs", "-1"], "-1"),  # failed before the fixes
    ("T-regc-neg", "reg_coefficients", ["--reg-coefficients", "-1", "0.05"], "-1"),  # failed before
    ("T-regc-nan", "reg_coefficients", ["--reg-coefficients", "nan", "0.05"], "nan"),  # failed
    ("T-eps-neg", "epsilon_train", ["--epsilon-train", "-8"], "-8"),  # before: adv. training off
    ("T-eps-nan", "epsilon_train", ["--epsilon-train", "nan"], "nan"),  # before the fixes: late
    ("T-eps-big", "epsilon_train", ["--epsilon-train", "1000"], "1000"),  # before: accepted
    ("T-steps-0", "steps_train", ["--steps-train", "0"], "0"),  # before the fixes: accepted
    ("T-steps-neg", "steps_train", ["--steps-train", "-1"], "-1"),  # before the fixes: accepted
    ("T-seed-neg", "seed", ["--seed", "-1"], "-1"),  # before the fixes: numpy's words, no value
    ("T-workers-neg", "workers", ["--workers", "-1"], "-1"),  # before: torch's words, late
    ("T-save-neg", "save_every", ["--save-every", "-1"], "-1"),  # before the fixes: accepted
    ("T-fpr-noval", "target_fpr", ["--target-fpr", "5"], "5"),  # before: unused, so unchecked
    ("T-val-1", "val_fraction", ["--val-fraction", "1"], "1"),  # passed before the fixes too
    ("T-val-nan", "val_fraction", ["--val-fraction", "nan"], "nan"),  # passed before the fixes too
    # before the fixes: checked only after training (last.pt written), named in words
    ("T-fpr-1", "target_fpr", ["--val-fraction", "0.5", "--target-fpr", "1"], "1"),
    ("T-feat-99", "feature_layers", ["--feature-layers", "99"], "99"),  # before: names "layer"
    ("T-reg-0", "reg_layers", ["--reg-layers", "0", "3"], "0"),  # before: names "layer" only
    ("T-regc-count", "reg_coefficients", ["--reg-coefficients", "0.05"], "0.05"),  # passes
    ("T-img-70", "image_size", ["--image-size", "70"], "70"),  # passed before the fixes too
    ("T-backbone-x", "backbone", ["--backbone", "no_such_vit"], "no_such_vit"),  # passes
    ("T-dataset-x", "dataset", ["--dataset", "nosuch"], "nosuch"),  # passed before the fixes too
    ("T-device-foo", "device", ["--device", "foo"], "foo"),  # before the fixes: RuntimeError
    ("T-device-mps", "device", ["--device", "mps"], "mps"),  # before the fixes: RuntimeError
]


@pytest.mark.parametrize("key,flags,value", [c[1:] for c in TRAIN_BAD_FLAGS],
                         ids=[c[0] for c in TRAIN_BAD_FLAGS])
def test_train_refuses_out_of_domain_flag(cli, data, tmp_path, key, flags, value):
    out = tmp_path / "run"
    result = cli(*train_argv(data, out, *flags))
    assert_refused(result, value)
    assert_names_key(result, key)
    assert_nothing_written(out)


def test_train_epochs_float_flag_is_a_usage_error(cli, data, tmp_path):
    # T-epochs-float; passed before the fixes too (argparse)
    assert_refused(cli(*train_argv(data, tmp_path / "run", "--epochs", "1.5")), "--epochs", "1.5")


def test_train_image_size_below_patch_suggests_a_positive_size(cli, data, tmp_path):
    # T-img-8. Before the fixes: "image size 8 is not a multiple of ... 16; use e.g. 0"
    result = cli(*train_argv(data, tmp_path / "run", "--image-size", "8"))
    assert_refused(result, "8")
    suggested = [int(s) for s in re.findall(r"e\.g\.\s*(-?\d+)", result.text)]
    assert all(s > 0 for s in suggested), result


def test_train_device_cuda_without_gpu_is_refused(cli, data, tmp_path):
    # T-device-cuda; passed before the fixes too
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_refused(cli(*train_argv(data, tmp_path / "run", "--device", "cuda:7")), "cuda:7")


def test_train_backbone_weights_with_no_pretrained_is_not_silently_ignored(cli, data, tmp_path):
    # T-bweights-ignored. Before the fixes: the file (even a missing one) is silently ignored.
    result = cli(*train_argv(data, tmp_path / "run", "--backbone-weights", tmp_path / "nope.pth"))
    assert "Traceback" not in result.text
    # (the log line "backbone weights: random initialisation" does not count)
    assert "--backbone-weights" in result.text or "backbone_weights" in result.text, result


def test_train_val_fraction_warns_when_too_few_normals_for_target_fpr(cli, data, tmp_path):
    # T-val-few. Before the fixes: 2 held-out images at FPR 0.01 (needs ~100), no warning.
    result = cli(*train_argv(data, tmp_path / "run", "--val-fraction", "0.5"))
    assert result.code == 0, result
    assert "0.01" in result.text and "100" in result.text, result


# ============================================================================ train: YAML
# YAML values go through the same types and checks as the flags.

YAML_BAD = [
    # (id, key, YAML value, text the message names)
    ("Y-reg-layers-int", "reg_layers", 6, "6"),  # before the fixes: TypeError traceback
    ("Y-feature-layers-int", "feature_layers", 6, "6"),  # before the fixes: TypeError traceback
    ("Y-regc-str", "reg_coefficients", ["abc", "def"], "abc"),  # before the fixes: TypeError
    ("Y-workers-float", "workers", 0.5, "0.5"),  # before the fixes: TypeError traceback
    ("Y-seed-float", "seed", 1.5, "1.5"),  # before the fixes: TypeError traceback
    ("Y-dataset-dir-int", "dataset_dir", 98765, "98765"),  # before the fixes: TypeError traceback
    ("Y-class-list", "class_name", [CLASS], CLASS),  # before the fixes: TypeError traceback
    ("Y-dsc-heads-3", "dsc_heads", 3, "3"),  # before the fixes: AssertionError traceback
    ("Y-radius-neg", "map_radius", -3, "-3"),  # before the fixes: RuntimeError traceback
    ("Y-adv-str", "adv_train", "false", "false"),  # before the fixes: a string is truthy: ON
    ("Y-bf16-str", "bf16", "yes please", "yes please"),  # before the fixes: truthy string
    ("Y-pretrained-str", "pretrained", "maybe", "maybe"),  # before: tries to fetch weights
    ("Y-img-null", "image_size", None, ("null", "none")),  # before the fixes: silently 224 px
    ("Y-topk-0", "top_k", 0, "0"),  # before the fixes: accepted, scores are NaN
    ("Y-dsc-hidden-0", "dsc_hidden", 0, "0"),  # before the fixes: accepted
    ("Y-sigma-neg", "map_sigma", -1.0, "-1"),  # before the fixes: accepted
    ("Y-minlr-2", "min_lr_ratio", 2.0, "2"),  # before the fixes: accepted (lr rises)
    ("Y-save-float", "save_every", 0.5, "0.5"),  # before the fixes: accepted
    ("Y-steps-neg", "steps_train", -2, "-2"),  # before the fixes: accepted
    ("Y-lr-neg", "lr", -0.001, "-0.001"),  # before the fixes: accepted
    ("Y-eps-nan", "epsilon_train", float("nan"), "nan"),  # before the fixes: late loss error
    ("Y-batch-float", "batch_size", 4.0, "4.0"),  # passed before too (torch's words, late)
    ("Y-dropout-2", "dsc_dropout", 2.0, "2"),  # before the fixes: torch's words, no key named
    ("Y-wd-neg", "weight_decay", -1.0, "-1"),  # passed before the fixes too (torch's words)
    ("Y-pseudo-0", "pseudo_size_scale", 0.0, "0"),  # before the fixes: names size_scale only
    ("Y-preset-x", "preset", "turbo", "turbo"),  # passed before the fixes too
]


@pytest.mark.parametrize("key,value,shown", [c[1:] for c in YAML_BAD],
                         ids=[c[0] for c in YAML_BAD])
def test_train_yaml_value_checked_like_its_flag(cli, data, tmp_path, key, value, shown):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", data, out, **{key: value})
    result = cli("train", "--config", config, "--quiet")
    assert result.code == 2, result
    assert "Traceback" not in result.text, result
    shown = (shown,) if isinstance(shown, str) else shown
    assert any(s.lower() in result.text.lower() for s in shown), f"{shown} not named: {result}"
    assert_names_key(result, key)
    assert_nothing_written(out)


def test_train_yaml_string_numbers_are_converted_like_flags(cli, data, tmp_path):
    # Y-lr-str: PyYAML reads `lr: 1e-3` as the string "1e-3"; passed before too (argparse).
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", data, out)
    config.write_text(config.read_text() + "lr: 1e-3\n")
    assert cli("train", "--config", config, "--quiet").code == 0


@pytest.mark.parametrize("case,text,needle", [
    ("Y-unknown-key", "foo: 1\n", "foo"),  # passed before the fixes too
    ("Y-list", "- a\n- b\n", "mapping"),  # passed before the fixes too
    ("Y-invalid", "epochs: [1,\n", "c.yaml"),  # passed before the fixes too
    ("Y-binary", None, "c.yaml"),  # before the fixes: "'utf-8' codec can't decode ..." no path
])
def test_train_broken_yaml_file(cli, tmp_path, case, text, needle):
    config = tmp_path / "c.yaml"
    if text is None:
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, "PNG")
        config.write_bytes(buffer.getvalue())
    else:
        config.write_text(text)
    assert_refused(cli("train", "--config", config, "--quiet"), needle)


def test_train_missing_yaml_file(cli, tmp_path):
    # Y-missing; passed before the fixes too
    assert_refused(cli("train", "--config", tmp_path / "nope.yaml"), "nope.yaml")


# ============================================================================ train: lost work


def test_train_rerun_in_finished_run_folder_refuses_without_resume(cli, data, run_copy):
    # L-rerun. Before the fixes: last.pt (3 epochs) silently replaced by a 1-epoch model,
    # train_log.jsonl truncated, the old epoch_*.pt left beside the new run.
    before = digest(run_copy)
    result = cli(*train_argv(data, run_copy))
    assert_refused(result, "--resume", "--overwrite")
    assert digest(run_copy) == before


def test_train_overwrite_flag_starts_afresh_without_stale_files(cli, data, run_copy):
    # L-overwrite. Before the fixes: there is no --overwrite flag (usage error).
    result = cli(*train_argv(data, run_copy, "--overwrite"))
    assert result.code == 0, result
    assert not list(run_copy.glob("epoch_*.pt")), "epoch files of the replaced run remain"
    assert len(run_copy.joinpath("train_log.jsonl").read_text().splitlines()) == 1


def test_train_yaml_float_epochs_in_existing_run_keeps_its_log(cli, data, run_copy, tmp_path):
    # Y-epochs-float-existing. Before the fixes: TypeError after train_log.jsonl was emptied.
    config = write_yaml(tmp_path / "c.yaml", data, run_copy, epochs=1.5)
    before = digest(run_copy)
    result = cli("train", "--config", config, "--quiet")
    assert_refused(result, "1.5")
    assert_names_key(result, "epochs")
    assert digest(run_copy) == before


def test_train_resume_on_imported_checkpoint_is_a_clear_message(cli, data, imported, tmp_path):
    # L-resume-imported. Before the fixes: logging error, then KeyError: 'optimizer'.
    ckpt = Path(shutil.copy(imported, tmp_path / "last.pt"))
    before = digest(ckpt)
    result = cli("train", "--resume", ckpt, "--dataset-dir", data, "--epochs", "1",
                 "--workers", "0", "--device", "cpu", "--quiet")
    assert_refused(result, "resume")
    assert "optimizer" in result.text.lower() or "imported" in result.text.lower(), result
    assert digest(ckpt) == before


@pytest.mark.parametrize("key,flags", [
    ("image_size", ["--image-size", "32"]),  # before the fixes: size-mismatch RuntimeError
    ("feature_layers", ["--feature-layers", "2", "3"]),  # before the fixes: RuntimeError
    ("backbone", ["--backbone", "vit_tiny_patch16_224"]),  # before the fixes: RuntimeError
], ids=["L-resume-imgsize", "L-resume-featlayers", "L-resume-backbone"])
def test_train_resume_refuses_architecture_changes(cli, run_copy, key, flags):
    before = digest(run_copy)
    result = cli("train", "--output-dir", run_copy, "--resume", "--epochs", "4", *flags,
                 "--quiet")
    assert_refused(result)
    assert_names_key(result, key)
    assert digest(run_copy) == before


def test_train_resume_on_a_directory_says_what_is_wrong(cli, run_copy):
    # L-resume-dir. Before the fixes: "checkpoint <dir> does not exist" for an existing folder.
    result = cli("train", "--resume", run_copy, "--epochs", "4", "--quiet")
    assert "Traceback" not in result.text
    assert "does not exist" not in result.text, result


@pytest.mark.parametrize("target", ["zero", "missing", "auto-empty"])
def test_train_resume_bad_target(cli, tmp_path, target):
    # L-resume-zero / L-resume-missing / L-resume-auto-none; passed before the fixes
    if target == "zero":
        path = tmp_path / "zero.pt"
        path.write_bytes(b"")
        result = cli("train", "--resume", path, "--quiet")
    elif target == "missing":
        path = tmp_path / "nope" / "last.pt"
        result = cli("train", "--resume", path, "--quiet")
    else:
        path = tmp_path / "empty" / "last.pt"
        result = cli("train", "--resume", "--output-dir", path.parent, "--quiet")
    assert_refused(result, f"{path.parent.name}/{path.name}" if target != "zero" else path.name)


def test_train_resume_finished_run_changes_nothing(cli, run_copy):
    # L-resume-done; passed before the fixes too
    before = digest(run_copy / "last.pt"), digest(run_copy / "train_log.jsonl")
    result = cli("train", "--output-dir", run_copy, "--resume", "--quiet")
    assert result.code == 0, result
    assert (digest(run_copy / "last.pt"), digest(run_copy / "train_log.jsonl")) == before


def test_train_single_class_dataset_dir_is_the_class_folder(cli, tmp_path):
    # S-headct. Before the fixes: "train needs --dataset-dir and --class-name".
    root = tmp_path / "data"
    make_mvtec_class(root, name="headct", n_train=4, n_good=2, n_bad=2, size=64)
    out = tmp_path / "run"
    result = cli("train", "--dataset", "headct", "--dataset-dir", root / "headct", *MODEL_FLAGS,
                 "--epochs", "1", "--output-dir", out)
    assert result.code == 0, result
    assert (out / "last.pt").is_file()


# ============================================================================ bad data files


def test_decompression_bomb_in_train_set(cli, tmp_path):
    # D-bomb-train. Before the fixes: PIL's DecompressionBombError traceback.
    root = damaged_data(tmp_path, lambda c: bomb_png(c / "train/good/000.png"))
    assert_refused(cli(*train_argv(root, tmp_path / "run")), "000.png")


# ======================================================================= more of the same kinds


@pytest.mark.parametrize("key,flags,value", [
    ("feature_layers", ["--feature-layers", "0"], "0"),  # T-feat-0
    ("feature_layers", ["--feature-layers", "-1"], "-1"),  # T-feat-neg
    ("reg_layers", ["--reg-layers", "2", "99"], "99"),  # T-reg-99
    ("feature_layers", ["--feature-layers", "3", "3"], "3"),  # repeated block
    ("image_size", ["--image-size", "8"], "8"),  # T-img-8 (and the suggestion is positive)
    ("seed", ["--seed", str(2**40)], str(2**40)),  # T-seed-big
    ("device", ["--device", "cuda:x"], "cuda:x"),
], ids=["T-feat-0", "T-feat-neg", "T-reg-99", "T-feat-dup", "T-img-8", "T-seed-big", "T-dev-x"])
def test_train_refuses_more_out_of_domain_flags(cli, data, tmp_path, key, flags, value):
    out = tmp_path / "run"
    result = cli(*train_argv(data, out, *flags))
    assert_refused(result, value)
    assert_names_key(result, key)
    assert_nothing_written(out)


@pytest.mark.parametrize("key,value,shown", [
    ("epochs", "ten", "ten"),  # Y-epochs-str: the YAML file is named too
    ("feature_layers", [3, "x"], "x"),
    ("reg_coefficients", 0.05, "0.05"),  # a scalar for a list
    ("quiet", "yes", "yes"),  # a switch takes a boolean
    ("dataset", ["mvtec"], "mvtec"),
    ("steps_train", None, "null"),  # null where the flag has a default
], ids=["Y-epochs-str", "Y-feat-str", "Y-regc-scalar", "Y-quiet-str", "Y-dataset-list",
        "Y-steps-null"])
def test_train_more_yaml_values_checked_like_their_flags(cli, data, tmp_path, key, value, shown):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", data, out, **{key: value})
    result = cli("train", "--config", config, "--quiet")
    assert_refused(result, shown)
    assert_names_key(result, key)
    assert_nothing_written(out)


def test_yaml_error_names_the_file(cli, data, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", data, tmp_path / "run", epochs="ten")
    assert_refused(cli("train", "--config", config), "c.yaml", "epochs", "ten", "integer")


def test_resume_with_fewer_epochs_says_so(cli, run_copy):
    # L-resume-fewer. Before the fixes: nothing trained and nothing said.
    before = digest(run_copy / "last.pt")
    result = cli("train", "--output-dir", run_copy, "--resume", "--epochs", "2", "--quiet")
    assert result.code == 0, result
    assert "already holds 3 epoch(s)" in result.text, result
    assert digest(run_copy / "last.pt") == before


def test_resume_and_overwrite_of_the_same_run_is_refused(cli, run_copy):
    before = digest(run_copy)
    result = cli("train", "--output-dir", run_copy, "--resume", "--overwrite", "--quiet")
    assert_refused(result, "--overwrite", "--resume")
    assert digest(run_copy) == before


def test_resume_into_another_folder_holding_a_run_is_refused(cli, run_copy, tmp_path):
    other = Path(shutil.copytree(run_copy, tmp_path / "other"))
    before = digest(other)
    result = cli("train", "--resume", run_copy / "last.pt", "--output-dir", other,
                 "--epochs", "4", "--quiet")
    assert_refused(result, "--overwrite")
    assert digest(other) == before


# ============================================================================ decided domains
# The audit left these open; the choices (docs/errors-and-safety.md, CATALOGUE's proposals).


@pytest.mark.parametrize("key,flags,value", [
    ("epochs", ["--epochs", "0"], "0"),  # >= 1: an untrained model is a Python-API use
    ("lr", ["--lr", "0"], "0"),  # > 0: --backbone-lr 0 is the documented freeze
], ids=["D-epochs-0", "D-lr-0"])
def test_decided_refused_train_flags(cli, data, tmp_path, key, flags, value):
    out = tmp_path / "run"
    result = cli(*train_argv(data, out, *flags))
    assert_refused(result, value)
    assert_names_key(result, key)
    assert_nothing_written(out)


@pytest.mark.parametrize("values,needle", [
    ({"dsc_layers": 0}, "dsc_layers"),  # >= 1 (the paper uses 1)
    ({"reg_layers": [], "reg_coefficients": []}, "--no-reg"),  # empty with the regulariser on
    ({"map_sigma": 0.0}, "map_sigma"),  # > 0; map_radius 0 is "no smoothing" instead
], ids=["D-dsc-layers-0", "D-reg-empty", "D-sigma-0"])
def test_decided_refused_yaml_values(cli, data, tmp_path, values, needle):
    out = tmp_path / "run"
    result = cli("train", "--config", write_yaml(tmp_path / "c.yaml", data, out, **values))
    assert_refused(result, needle)
    assert_nothing_written(out)


def test_decided_accepted_values_with_warnings(cli, data, tmp_path):
    """Inside their domains but probably not meant: accepted, each with a warning."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", data, out, top_k=99, map_radius=0,
                        warmup_epochs=1, epsilon_train=0.0, save_every=0, reg=False,
                        reg_layers=[], reg_coefficients=[])
    result = cli("train", "--config", config, "--quiet")
    assert result.code == 0, result
    for needle in ("top_k = 99 is more than the 16 patches", "--warmup-epochs 1 >= --epochs 1",
                   "--epsilon-train 0 with adversarial training on"):
        assert needle in result.text, (needle, result)
    assert not list(out.glob("epoch_*.pt"))  # --save-every 0: only last.pt


def test_absurd_worker_counts_are_refused_before_any_process_starts(cli, data, tmp_path,
                                                                     run_copy):
    # --workers 1e12 made the DataLoader try to start that many processes.
    assert_refused(cli(*train_argv(data, tmp_path / "run", "--workers", "1000000000000")),
                   "1000000000000", "[0, 256]")
    result = cli("test", "--checkpoint", run_copy / "last.pt", "--workers", "100000")
    assert_refused(result, "--workers", "100000")


@pytest.mark.slow
def test_epsilons_that_look_like_0_1_units_get_a_warning(cli, data, tmp_path, run_copy):
    # 0.03 is accepted (it is in the domain) but almost surely meant 0.03 * 255 = 7.65.
    result = cli(*train_argv(data, tmp_path / "fresh", "--epsilon-train", "0.03"))
    assert result.code == 0 and "--epsilon-train 0.03 is in 1/255 units" in result.text, result
    result = cli("test", "--checkpoint", run_copy / "last.pt", "--epsilon-test", "0.03",
                 "--steps-test", "1", "--no-record", "--json", tmp_path / "r.json", "--quiet")
    assert result.code == 0 and "give 7.65" in result.text, result


# ============================================================================ past failures


def test_yaml_alias_bomb_is_refused_before_it_expands(cli, data, tmp_path):
    # Formerly (security): a 328-byte config expanded into a 351 MB message (21 s, 1 GB).
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines.append("feature_layers: *a8")
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert config.stat().st_size < 700
    start = time.perf_counter()
    result = cli("train", "--config", config, "--dataset-dir", data, "--output-dir",
                 tmp_path / "run")
    assert time.perf_counter() - start < 5
    assert_refused(result, "bomb.yaml", "aliases")
    assert len(result.text) < 2000, len(result.text)
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("name", ["../data/widget", "/etc", "..", "a/b", "~root"])
def test_class_name_is_a_single_folder_name(cli, tmp_path, name):
    # Formerly (security): train --class-name ../data/widget and absolute paths read outside
    # --dataset-dir.
    root = tmp_path / "datasets" / "mvtec"
    make_mvtec_class(root, name=CLASS, n_train=4, n_good=2, n_bad=2, size=64)
    make_mvtec_class(tmp_path / "datasets", name="widget", n_train=4, n_good=2, n_bad=2,
                     size=64)
    out = tmp_path / "run"
    argv = train_argv(root, out)
    argv[argv.index("--class-name") + 1] = name
    assert_refused(cli(*argv), "--class-name", "single folder name")
    assert_nothing_written(out)
    # The same rule where a YAML config sets it.
    config = write_yaml(tmp_path / "c.yaml", root, out, class_name=name)
    assert_refused(cli("train", "--config", config, "--quiet"), "class_name",
                   "single folder name")
    assert_nothing_written(out)


def test_output_dir_inside_the_data_set_is_refused(cli, tmp_path):
    # Formerly: --output-dir data/bottle/train/good made the next run train on train_curves.png.
    root = tmp_path / "data"
    make_mvtec_class(root, name=CLASS, n_train=4, n_good=2, n_bad=2, size=64)
    before = digest(root)
    out = root / CLASS / "train" / "good"
    assert_refused(cli(*train_argv(root, out)), "--output-dir", "inside", "data set")
    assert digest(root) == before


def test_a_run_folder_is_locked_while_a_run_writes_it(cli, data, tmp_path):
    # Formerly (loss): two trainings into one --output-dir both exited 0, last.pt held one
    # run's model and train_log.jsonl mixed both. Another process's lock is a held flock.
    import fcntl
    import os

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli(*train_argv(data, out))
        assert_refused(result, "--output-dir", "another patchguard run")
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    assert cli(*train_argv(data, out)).code == 0  # released: the same command now runs


def test_two_api_trainings_into_one_folder_at_once(data, tmp_path, monkeypatch):
    # The same through the Python API, the second started while the first is writing.
    import patchguard
    from patchguard.utils.checks import InputError

    out = tmp_path / "run"
    config = tiny_config(data, out, class_name=CLASS, epochs=1, steps_train=1)
    seen = []

    def second_run(*args, **kwargs):
        with pytest.raises(InputError, match="being written by another run"):
            patchguard.train(config, progress=False)
        seen.append(True)

    import patchguard.training.trainer as trainer

    real = trainer._train

    def first_run(*args, **kwargs):
        second_run()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train", first_run)
    patchguard.train(config, progress=False)
    assert seen == [True]
    assert (out / "last.pt").is_file()


def test_relative_dataset_dir_is_stored_resolved(cli, data, tmp_path, monkeypatch):
    # Formerly: train --dataset-dir data ... then test from another folder said the data set
    # directory 'data' does not exist.
    monkeypatch.chdir(data.parent)
    out = tmp_path / "run"
    result = cli(*train_argv(Path(data.name), out))
    assert result.code == 0, result
    assert "is stored as <tmp>" in result.text, result  # says what it was resolved to
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["dataset_dir"] == str(data.resolve())
    monkeypatch.chdir(tmp_path)
    tested = cli("test", "--checkpoint", out / "last.pt", "--epsilon-test", "0", "--device",
                 "cpu", "--quiet", "--no-record", "--json", tmp_path / "r.json")
    assert tested.code == 0, tested
