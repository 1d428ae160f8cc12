"""Run configuration: every option declared once, in sections; named presets, YAML and flags.

Each option is one dataclass field declared with :func:`option`: its type (the annotation), its
default, its domain (a :class:`Domain`: the check and the words the docs show), its command-line
flag and its help. The ``train`` flags (:func:`add_flags`), the value checks
(:meth:`TrainConfig.validate`), YAML number coercion and the options table of the
documentation (:func:`options_markdown`) are all derived from these declarations. The fields
are grouped in sections (:data:`SECTIONS`): a YAML file may nest them under the section names
or give them flat, as older files and checkpoints do; checkpoints store the flat form.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .utils import checks
from .utils.checks import InputError
from .utils.registry import Entry, Registry

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_small_patch14_dinov2.lvd142m"

# The training attacks, by name (implementations in patchguard.training.task, imported when a
# run uses one). Traits: "objective" (it ascends --train-objective), "carries" (it can start
# from a carried perturbation). pgd is the paper's; the others are cheaper alternatives.
TRAINING_ATTACKS: Registry = Registry("training attack", {
    "pgd": Entry("patchguard.training.task:PGD", "the paper's PGD (--steps-train steps)",
                 {"objective": True, "carries": True}),
    "fgsm-rs": Entry("patchguard.training.task:FGSM_RS",
                     "one step of 1.25 eps from a random start",
                     {"objective": True, "carries": True}),
    "n-fgsm": Entry("patchguard.training.task:N_FGSM",
                    "noise of 2 eps, one step of eps, no projection",
                    {"objective": True, "carries": False}),
    "free": Entry("patchguard.training.task:FREE",
                  "free training: --free-replays optimiser steps per batch, each also "
                  "updating the perturbation", {"objective": False, "carries": True}),
})
# What the training attacks ascend: each entry makes the objective for a model.
TRAINING_OBJECTIVES: Registry = Registry("training objective", {
    "mask": Entry("patchguard.adversarial.objectives:training_mask_objective",
                  "the paper's: mean normal-patch logit minus mean anomalous-patch logit"),
    "score": Entry("patchguard.adversarial.objectives:training_score_objective",
                   "the top-k image score, the decision an attacker moves"),
})


# The detector on top of the backbone, by name (the network class of each).
HEADS: Registry = Registry("head", {
    "discriminator": Entry("patchguard.models.patchguard:PatchGuard",
                           "PatchGuard's per-patch discriminator (the paper)"),
    "knn": Entry("patchguard.models.knn:PatchKNN",
                 "a patch memory bank scored by nearest-neighbour distance, built in one pass "
                 "(no optimiser)"),
})


@dataclass(frozen=True)
class Domain:
    """A value's domain: ``check(label, value)`` returns the value or raises InputError, and
    ``text`` says it in words (the docs' Domain column)."""

    check: Callable[[str, Any], Any]
    text: str


def _interval(minimum: float | None, maximum: float | None, min_open: bool = False,
              max_open: bool = False) -> str:
    def number(value: float) -> str:
        return str(value) if isinstance(value, int) else f"{value:g}"

    if minimum is not None and maximum is not None:
        return (f"in {'(' if min_open else '['}{number(minimum)}, {number(maximum)}"
                f"{')' if max_open else ']'}")
    if minimum is not None:
        return f"{'>' if min_open else '>='} {number(minimum)}"
    return "" if maximum is None else f"{'<' if max_open else '<='} {number(maximum)}"


def ints(minimum: int | None = None, maximum: int | None = None, fix: str = "") -> Domain:
    """Integers in [minimum, maximum]."""
    return Domain(lambda name, value: checks.integer(name, value, minimum, maximum, fix),
                  f"integer {_interval(minimum, maximum)}".strip())


def numbers(minimum: float | None = None, maximum: float | None = None, min_open: bool = False,
            max_open: bool = False, fix: str = "") -> Domain:
    """Finite numbers in the interval (open ends exclude the bound)."""
    return Domain(lambda name, value: checks.number(name, value, minimum, maximum, min_open,
                                                    max_open, fix),
                  f"number {_interval(minimum, maximum, min_open, max_open)}".strip())


def optional(domain: Domain, none_means: str) -> Domain:
    """None (meaning ``none_means``) or a value of ``domain``."""
    return Domain(lambda name, value: None if value is None else domain.check(name, value),
                  f"{domain.text}, or null ({none_means})")


def one_of(names: Callable[[], Any]) -> Domain:
    """One of the names ``names()`` gives (a registry's, read when checked)."""
    return Domain(lambda name, value: checks.choice(name, value, list(names())),
                  "one of the choices")


def text(allow_empty: bool = True) -> Domain:
    """A string (empty allowed unless ``allow_empty`` is False)."""
    return Domain(lambda name, value: checks.text(name, value, allow_empty=allow_empty),
                  "text" if allow_empty else "non-empty text")


def _text_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise InputError(name, value, "must be a list", "e.g. [folder]")
    return [checks.text(name, item, allow_empty=False) for item in value]


BOOLEAN = Domain(checks.boolean, "true / false")
# A class name becomes a folder name under the data set and a run folder: one component only.
FOLDER_NAME = Domain(lambda name, value: checks.path_component(name, value, allow_empty=True),
                     "a single folder name")
LAYERS = Domain(lambda name, value: checks.integer_list(name, value, 1),
                "list of distinct block numbers >= 1")


def option(default: Any, domain: Domain, help: str, flag: str | None = "",
           choices: Callable[[], Any] | None = None) -> Any:
    """Declare one option: default, domain, help, and its flag (``""``: derived from the name,
    ``--no-NAME`` for a switch that is on by default; None: YAML and API only)."""
    metadata = {"domain": domain, "help": help, "flag": flag, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _presets() -> Registry:
    return PRESETS


@dataclass
class DataOptions:
    """Data: which images are read and how pseudo anomalies and held-out images are drawn."""

    dataset: str = option("mvtec", text(allow_empty=False),
                          "data set layout (default: mvtec)")
    dataset_dir: str = option("", text(), "root folder holding one folder per class")
    class_name: str = option("", FOLDER_NAME, "class folder name (a single folder name)")
    pseudo_size_scale: float = option(1.0, numbers(0.0, 1.0, min_open=True),
                                      "scale of the pseudo anomalies' size", flag=None)
    auto_foreground: bool = option(
        False, BOOLEAN, "generate foreground masks for classes without them (method auto) "
        "instead of using the whole image (the original's behaviour)")
    val_fraction: float = option(
        0.0, numbers(0.0, 1.0, max_open=True),
        "hold out this share of train images to set decision thresholds (0: train on every "
        "image, as the paper; thresholds then come from `patchguard calibrate`)")
    target_fpr: float = option(
        0.01, numbers(0.0, 1.0, max_open=True),
        "false-positive rate on held-out normal images for the thresholds")


@dataclass
class ModelOptions:
    """Model: the network (a checkpoint's stored values must be valid to rebuild it)."""

    backbone: str = option(DEFAULT_BACKBONE, text(allow_empty=False), "timm ViT name")
    backbone_weights: str | None = option(
        None, optional(text(), "the hub's"),
        "local backbone weights (timm keys, .safetensors or .pth)")
    pretrained: bool = option(True, BOOLEAN,
                              "pretrained backbone (off: random initialisation, like the "
                              "original code)")
    image_size: int = option(224, ints(1, fix="give a positive multiple of the backbone's patch "
                                           "size"), "input size in pixels")
    feature_layers: list[int] = option([12], LAYERS, "backbone blocks whose features the "
                                       "discriminator reads")
    reg_layers: list[int] = option(
        [6, 9, 12], Domain(lambda name, value: checks.integer_list(
            name, value, 1, nonempty=False, example="[6, 9, 12]"), "list of block numbers"),
        "backbone blocks whose attention the regulariser pulls towards uniform")
    dsc_layers: int = option(1, ints(1), "discriminator layers", flag=None)
    dsc_hidden: int = option(2048, ints(1), "discriminator width", flag=None)
    dsc_heads: int = option(4, ints(1), "discriminator attention heads", flag=None)
    dsc_dropout: float = option(0.2, numbers(0.0, 1.0, max_open=True), "discriminator dropout",
                                flag=None)
    top_k: int = option(3, ints(1), "patches averaged into the image score", flag=None)
    map_sigma: float = option(6.0, numbers(0.0, min_open=True),
                              "Gaussian smoothing of the anomaly map (pixels)", flag=None)
    map_radius: int = option(7, ints(0, fix="0 means no smoothing"),
                             "radius of the smoothing kernel", flag=None)
    head: str = option("discriminator", one_of(lambda: HEADS), "the detector on the backbone",
                       choices=lambda: HEADS)
    knn_bank_size: int = option(0, ints(0, fix="0 keeps every training patch"),
                                "knn: patches kept in the memory bank (0: all)")
    knn_coreset: str = option("greedy", Domain(
        lambda name, value: checks.choice(name, value, ["greedy", "random"]), "greedy, random"),
        "knn: how a smaller bank is chosen (greedy k-center or random)")


@dataclass
class OptimisationOptions:
    """Optimisation: epochs, learning rates, what is trained and the regulariser's weights."""

    epochs: int = option(1000, ints(1), "training epochs")
    batch_size: int = option(16, ints(1), "images per batch (each gives 2 or 4 views)")
    lr: float = option(8e-4, numbers(0.0, min_open=True, fix="the paper uses 8e-4; "
                                     "--backbone-lr 0 freezes the backbone"), "learning rate")
    backbone_lr: float | None = option(
        None, optional(numbers(0.0, fix="0 freezes the backbone"), "same as lr, the paper"),
        "separate backbone learning rate (default: same as --lr); 0 freezes it")
    weight_decay: float = option(0.01, numbers(0.0), "AdamW weight decay", flag=None)
    min_lr_ratio: float = option(0.0125, numbers(0.0, 1.0),
                                 "cosine schedule's final lr as a share of lr", flag=None)
    warmup_epochs: int = option(0, ints(0), "epochs of linear learning-rate warm-up")
    frozen_blocks: int = option(0, ints(0, fix="0 trains every block"),
                                "freeze the patch embedding and the first N backbone blocks")
    reg: bool = option(True, BOOLEAN, "the attention regulariser")
    reg_coefficients: list[float] = option(
        [0.005, 0.01, 0.05], Domain(lambda name, value: checks.number_list(
            name, value, 0.0, nonempty=False, example="[0.005, 0.01, 0.05]"),
            "list of numbers >= 0, one per regularised layer"),
        "one KL weight per regularised layer")


@dataclass
class AdversarialOptions:
    """Adversarial training: the training attack, its budget and the robustness loss terms."""

    adv_train: bool = option(True, BOOLEAN, "adversarial training (attacked views)")
    epsilon_train: float = option(8.0, Domain(checks.epsilon, "number in [0, 255]"),
                                  "training attack budget, in 1/255 units")
    steps_train: int = option(10, ints(1, fix="--no-adv-train switches adversarial training "
                                          "off"), "training attack steps")
    train_attack: str = option("pgd", one_of(lambda: TRAINING_ATTACKS),
                               "training attack", choices=lambda: TRAINING_ATTACKS)
    train_objective: str = option("mask", one_of(lambda: TRAINING_OBJECTIVES),
                                  "what pgd / fgsm-rs / n-fgsm ascend",
                                  choices=lambda: TRAINING_OBJECTIVES)
    free_replays: int = option(4, ints(1, 64),
                               "free: optimiser steps per batch, each updating the perturbation")
    carry_perturbations: bool = option(
        False, BOOLEAN, "clean views start from their perturbation of the previous epoch")
    eps_ramp: float = option(
        0.0, numbers(0.0, 1.0, max_open=True, fix="0 trains at full epsilon throughout"),
        "share of training over which the training epsilon ramps up from 0 (0: none)")
    late_steps_train: int = option(0, ints(0, fix="0 keeps --steps-train throughout"),
                                   "attack steps for the last --late-fraction of training (0: "
                                   "--steps-train)")
    late_fraction: float = option(0.25, numbers(0.0, 1.0, min_open=True),
                                  "share of training that gets --late-steps-train")
    trades_weight: float = option(
        0.0, numbers(0.0), "weight of the KL between each view's patch logits and its "
        "attacked twin's (TRADES; 0: off)")
    rank_weight: float = option(
        0.0, numbers(0.0), "weight of a pairwise ranking loss: every (attacked) pseudo "
        "anomaly's image score above every (attacked) normal view's (0: off)")
    probe_every: int = option(0, ints(0, fix="0 switches the probe off"),
                              "every N epochs, robust AUROC on held-out images (catastrophic "
                              "overfitting; 0: never)")
    robustify_epsilon: float = option(
        0.0, numbers(0.0, 255.0, fix="0 skips the backbone fine-tuning"),
        "first fine-tune the backbone's features to resist this L-inf radius, without labels "
        "(1/255; patchguard robustify, cached per class and settings); 0 skips it, and so "
        "does --no-adv-train")
    robustify_steps: int = option(3, ints(1), "PGD steps of that fine-tuning's attack")
    robustify_epochs: int = option(8, ints(1), "epochs of that fine-tuning")
    robustify_images: list[str] = option(
        [], Domain(_text_list, "list of folders"),
        "extra unlabelled image folders for that fine-tuning ('skimage': scikit-image's "
        "photographs)")


@dataclass
class RuntimeOptions:
    """Runtime: where results go, seed, devices, speed settings and checkpoint cadence."""

    output_dir: str = option("runs/patchguard", text(allow_empty=False),
                             "where checkpoints and logs go")
    seed: int = option(0, ints(0, 2**32 - 1), "random seed")
    workers: int = option(4, Domain(checks.workers, "integer in [0, 256]"),
                          "data loader worker processes")
    device: str = option("auto", Domain(checks.device, "a device name torch knows"),
                         "auto (default), cpu, cuda, cuda:1, ...")
    bf16: bool = option(False, BOOLEAN, "bf16 autocast (for GPUs; runs slower on CPUs)")
    compile: bool = option(False, BOOLEAN, "torch.compile the attack's forward pass and the "
                           "backbone blocks that are not regularised (pays off on GPUs)")
    tf32: bool = option(True, BOOLEAN, "on CUDA, TF32 matmuls and convolutions in fp32 "
                        "(slightly other numerics)")
    save_every: int = option(20, ints(0, fix="0 keeps only last.pt"),
                             "keep epoch_N.pt every N epochs in the second half (0: none)")
    checkpoint_every_min: float = option(
        10.0, numbers(0.0, fix="0 writes last.pt after every epoch"),
        "write last.pt when this many minutes have passed since the last write (also at the "
        "end and on Ctrl-C); 0 writes every epoch")
    preset: str = option("paper", one_of(_presets), "named defaults the other values "
                         "override", choices=_presets)


# The sections in the order of the docs and of a sectioned YAML file.
SECTIONS: dict[str, type] = {"data": DataOptions, "model": ModelOptions,
                             "optimisation": OptimisationOptions,
                             "adversarial": AdversarialOptions, "runtime": RuntimeOptions}
# Keys the network is built from: a checkpoint's stored config must hold valid ones (the
# weights' source is not needed to rebuild it from the stored state).
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelOptions)
                   if f.name not in ("backbone_weights", "pretrained"))



@dataclass
class TrainConfig(RuntimeOptions, AdversarialOptions, OptimisationOptions, ModelOptions,
                  DataOptions):
    """Every setting of a training run (its sections' fields, flat); defaults are the
    paper's."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value against its domain (InputError naming the key, flag and range).

        Runs on construction (API arguments, YAML values, flags and checkpoint configs all go
        through it) and again when training starts, in case a field was changed since. Checks
        that need the backbone (block count, patch size, width) run before training starts, in
        :func:`patchguard.training.runs.check_architecture`.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name)))
        if self.reg and not self.reg_layers:
            raise InputError(_key_label("reg_layers"), self.reg_layers,
                             "is empty while the attention regulariser is on",
                             "give block numbers, or switch the regulariser off with --no-reg")
        if len(self.reg_coefficients) != len(self.reg_layers):
            raise InputError(
                _key_label("reg_coefficients"), self.reg_coefficients,
                f"{len(self.reg_layers)} regularised layers {list(self.reg_layers)} need as "
                f"many coefficients, not {len(self.reg_coefficients)}",
                "give --reg-coefficients with one value per --reg-layers entry")
        if (not TRAINING_ATTACKS.trait(self.train_attack, "objective")
                and self.train_objective != "mask"):
            raise InputError(_key_label("train_objective"), self.train_objective,
                             f"does not apply to --train-attack {self.train_attack}, whose "
                             "perturbation comes from the training loss's own backward pass",
                             f"leave --train-objective at mask with {self.train_attack}")
        if self.carry_perturbations and not TRAINING_ATTACKS.trait(self.train_attack,
                                                                   "carries"):
            carriers = [n for n in TRAINING_ATTACKS if TRAINING_ATTACKS.trait(n, "carries")]
            raise InputError(_key_label("carry_perturbations"), True,
                             f"does not apply to {self.train_attack}, which starts from fresh "
                             "noise each step",
                             f"use {', '.join(carriers)} with --carry-perturbations")

    def to_dict(self) -> dict[str, Any]:
        """Flat plain-dict form, as stored in checkpoints."""
        return dataclasses.asdict(self)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The values by section (the form a YAML config file is written in)."""
        values = self.to_dict()
        return {section: {f.name: values[f.name] for f in dataclasses.fields(cls)}
                for section, cls in SECTIONS.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | None = None) -> TrainConfig:
        """Build from a flat or sectioned dict, refusing unknown keys with a message that
        lists the valid ones.

        ``source`` (a checkpoint's path) marks a stored config: keys that shape the network
        must be valid (InputError naming the file), while an unknown key (from a newer version)
        or an out-of-domain training-only value (stored by an older version that did not check
        it) is logged and left out, so that old checkpoints keep loading for evaluation.
        """
        values = flatten_sections(values, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if source is None:
            if unknown:
                raise ValueError(
                    f"unknown config key(s) {unknown}; valid keys are: {', '.join(sorted(known))}"
                )
            return cls(**values)
        kept = {k: v for k, v in values.items() if k in known}
        if unknown:
            logger.warning("%s: ignoring config key(s) %s unknown to this patchguard version",
                           source, unknown)
        for key, value in list(kept.items()):
            try:
                check_value(key, value)
            except InputError as error:
                if key in MODEL_KEYS:
                    raise InputError(f"{source}: stored {error.name}", value, error.domain,
                                     "the checkpoint is damaged or was not written by "
                                     "patchguard") from None
                logger.warning("%s: stored %s; using the default for this load", source, error)
                del kept[key]
        try:
            return cls(**kept)
        except InputError as error:
            raise InputError(f"{source}: stored {error.name}", error.value, error.domain,
                             error.fix) from None


OPTIONS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def section_of(key: str) -> str:
    """The section that declares option ``key``."""
    for section, cls in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return section
    raise KeyError(key)


def flatten_sections(values: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """A sectioned mapping ({"model": {...}, ...}) made flat; flat keys pass as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and key not in OPTIONS:
            if not isinstance(value, Mapping):
                where = f" in {source}" if source else ""
                raise ValueError(f"section {key!r}{where} must hold a mapping of option: "
                                 f"value, not {checks.show(value)}")
            for inner, item in value.items():
                inner = str(inner).replace("-", "_")
                if inner in OPTIONS and section_of(inner) != key:
                    raise ValueError(f"option {inner!r} belongs in section "
                                     f"{section_of(inner)!r}, not {key!r}")
                flat[inner] = item
        else:
            flat[key] = value
    return flat


def field_flag(spec: dataclasses.Field) -> str | None:
    """The flag of a field declared with :func:`option` (None: YAML and API only)."""
    declared = spec.metadata["flag"]
    if declared != "":
        return declared
    name = spec.name.replace("_", "-")
    return f"--no-{name}" if spec.default is True else f"--{name}"


def flag_of(key: str) -> str | None:
    """The flag that sets option ``key`` (None: YAML and API only)."""
    return field_flag(OPTIONS[key])


def _key_label(key: str) -> str:
    """``epochs (--epochs)``: the key with the flag that sets it."""
    return checks.label(key, flag_of(key))


def check_value(key: str, value: Any) -> Any:
    """``value`` checked against option ``key``'s domain (InputError naming key and flag)."""
    return OPTIONS[key].metadata["domain"].check(_key_label(key), value)


# Named presets, one entry each: the values they set on top of the dataclass defaults.
# "paper" is the paper's recipe exactly. "fast" is for short budgets (minutes to an hour on a
# CPU or a few GPU minutes): measured on the demo data, the paper's single lr of 8e-4 on a
# pretrained backbone destroys its features within a few epochs, so the backbone gets its own
# small lr.
PRESETS: Registry = Registry("preset")
PRESETS.register("paper", {}, "the paper's recipe exactly (default)")
PRESETS.register("fast", {
    "lr": 8e-4,
    "backbone_lr": 3e-5,
    "feature_layers": [6],
    "reg_layers": [2, 4, 6],
    "batch_size": 8,
    "epochs": 10,
    "steps_train": 3,
    "val_fraction": 0.1,
    "auto_foreground": True,
}, "short budgets (minutes on a CPU): own backbone lr, fewer epochs and attack steps")
# "robust-advtrain" (issue 12; the "robust" preset until issue 21): the best adversarial
# training found on the demo's gravel class up to 30 CPU minutes per recipe
# (benchmarks/robust_budget.py, docs/robustness-study.md): the discriminator trained with the
# score-objective PGD-3. It does NOT reach issue 12's target: under `standard` at 2/255 0.250
# (brick), 0.500 (grass), 0.000 (gravel), under APGD-50 0.000 (washer); 0 at 8/255 on all four.
# Checkpoints trained as "robust" before the rename keep their stored config (the preset's name
# in a checkpoint decides nothing).
PRESETS.register("robust-advtrain", {
    "image_size": 112,
    "lr": 8e-4,
    "backbone_lr": 1e-4,
    "feature_layers": [6],
    "reg_layers": [2, 4, 6],
    "batch_size": 8,
    "epochs": 16,
    "steps_train": 3,
    "train_objective": "score",
    "frozen_blocks": 2,
    "eps_ramp": 0.3,
    "val_fraction": 0.1,
    "auto_foreground": True,
}, "the discriminator adversarially trained (score-objective PGD-3): 'robust' until issue 21")
# "robust" (issue 21, also under its first name "robust-features"): the backbone's layer 6 made
# robust first without labels (robustify: PGD-3 at 4/255, 8 epochs over the class's training
# images and scikit-image's photographs, cached per class and settings), then a kNN patch
# memory bank on it: no adversarial training at all. --no-adv-train gives the twin (the bank on
# the original backbone, no fine-tuning). Chosen over "robust-advtrain" by the mean over the
# four demo classes (docs/robust-features.md, "Preset choice"); it does not reach issue 21's
# targets either.
ROBUST_FEATURES = {
    "image_size": 112,
    "feature_layers": [6],
    "reg_layers": [2, 4, 6],
    "head": "knn",
    "robustify_epsilon": 4.0,
    "robustify_steps": 3,
    "robustify_epochs": 8,
    "robustify_images": ["skimage"],
    "val_fraction": 0.1,
}
PRESETS.register("robust", ROBUST_FEATURES, "a kNN patch memory bank on a backbone fine-tuned "
                 "first without labels (robustify; issue 21's chosen recipe)")
PRESETS.register("robust-features", ROBUST_FEATURES, "the same as robust (its name while it "
                 "was measured beside the adversarially trained one)")


def _scalar_type(key: str) -> type | None:
    """int, float or str for options whose values are one of them (or a list of them)."""
    annotation = str(OPTIONS[key].type).replace(" | None", "")
    if annotation.startswith("list["):
        annotation = annotation[5:-1]
    return {"int": int, "float": float, "str": str}.get(annotation)


def coerce_yaml_values(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers that YAML left as strings ("1e-3") converted as the flags would; nothing else.

    Anything that does not convert is left as it is, for :meth:`TrainConfig.validate` to refuse
    with the key's domain.
    """
    def convert(kind, value):
        if kind in (int, float) and isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                return value
        return value

    out = dict(values)
    for key, value in values.items():
        if key not in OPTIONS:
            continue
        kind = _scalar_type(key)
        out[key] = ([convert(kind, item) for item in value] if isinstance(value, list)
                    else convert(kind, value))
    return out


def preset_values(name: str) -> dict[str, Any]:
    """Values a preset sets on top of the dataclass defaults."""
    return dict(PRESETS[name])


# A config is a page of settings; anything larger is not one (and is never parsed whole).
_MAX_YAML_BYTES = 1_000_000


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors' aliases: a few hundred bytes of nested aliases expand
    into gigabytes (the "billion laughs"), and a config never needs them."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        """Refuse an alias before it is expanded."""
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted "
                                 "in a config; write the value out")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (flat, or nested by section) into a flat dict with underscores
    in the keys; aliases are refused (:class:`_NoAliasLoader`)."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > _MAX_YAML_BYTES:
            raise ValueError(f"config file {path} is {path.stat().st_size} bytes, more than a "
                             f"config's {_MAX_YAML_BYTES}; is it the right file?")
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader) or {}
    except UnicodeDecodeError:
        raise ValueError(f"cannot read config file {path}: not UTF-8 text (is it a YAML "
                         "file?)") from None
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read config file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    return flatten_sections({str(key).replace("-", "_"): value for key, value in data.items()},
                            str(path))


def build_config(
    preset: str = "paper",
    yaml_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Compose a config: dataclass defaults < preset < YAML file < explicit overrides.

    An override of None is a value like any other (``backbone_lr=None`` means "same as lr";
    ``image_size=None`` is refused), not "use the default": leave a key out for its default.
    """
    yaml_values = coerce_yaml_values(flatten_sections(yaml_values or {}))
    preset = (overrides or {}).get("preset") or yaml_values.get("preset") or preset
    values: dict[str, Any] = preset_values(preset)
    values.update(yaml_values)
    values.update({k: v for k, v in (overrides or {}).items() if k != "preset"})
    values["preset"] = preset
    return TrainConfig.from_dict(values)


def flag_arguments(skip: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``(flag, argparse keyword arguments)`` of every option that has a flag, except ``skip``.

    Every flag defaults to None ("not given"), so that presets and YAML values show through;
    a switch stores the opposite of its option's default. Choices and their help come from the
    option's registry.
    """
    out = []
    for key, spec in OPTIONS.items():
        flag = flag_of(key)
        if flag is None or key in skip:
            continue
        kwargs: dict[str, Any] = {"dest": key, "default": None, "help": spec.metadata["help"]}
        if str(spec.type) == "bool":
            kwargs.update(action="store_const", const=not spec.default)
            if spec.default:
                kwargs["help"] = "switch off: " + kwargs["help"]
        else:
            kwargs["type"] = _scalar_type(key) or str
            if str(spec.type).startswith("list["):
                kwargs["nargs"] = "+"
        if spec.metadata["choices"] is not None:
            entries = spec.metadata["choices"]()
            kwargs["choices"] = list(entries)
            kwargs["help"] += ": " + "; ".join(
                f"{n} ({entries.entry(n).help})" if entries.entry(n).help else n
                for n in entries)
        out.append((flag, kwargs))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    return value if isinstance(value, str) else checks.show(value)


def options_markdown() -> str:
    """The options table of the documentation, one table per section, from the
    declarations."""
    lines = ["# Options", "",
             "Generated by `python docs/gen_options.py` from the declarations in "
             "`patchguard/config.py` (training) and `patchguard/adversarial/settings.py` "
             "(evaluation, last section); do not edit by hand. Each training option can be set "
             "by its flag (where it has one), in a YAML file given with `--config` (flat, or "
             "nested under the section names below), or as a `TrainConfig` argument.", ""]
    for section, cls in SECTIONS.items():
        lines += [f"## {section}", "", (cls.__doc__ or "").strip(), "",
                  "| Option | Flag | Default | Domain | Description |",
                  "|---|---|---|---|---|"]
        lines += options_rows(dataclasses.fields(cls)) + [""]
    return "\n".join(lines)


def options_rows(specs: Iterable[dataclasses.Field], no_flag: str = "(YAML / API)",
                 describe: Callable[[dataclasses.Field], str] = lambda spec: spec.metadata["help"],
                 ) -> list[str]:
    """The Markdown table rows (Option, Flag, Default, Domain, Description) of fields declared
    with :func:`option`; ``no_flag`` fills the Flag cell of a field without one, ``describe``
    gives the Description (default: the help)."""
    lines = []
    for spec in specs:
        if "domain" not in spec.metadata:
            continue  # not an option (e.g. a value that only the API sets)
        default = (spec.default_factory() if spec.default is dataclasses.MISSING
                   else spec.default)
        domain = spec.metadata["domain"].text
        if spec.metadata["choices"] is not None:
            domain = ", ".join(f"`{n}`" for n in spec.metadata["choices"]())
        flag = field_flag(spec)
        cells = [f"`{spec.name}`", f"`{flag}`" if flag else no_flag,
                 f"`{_cell(default)}`" if default != "" else "(empty)", domain,
                 describe(spec)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines
