"""Clean and adversarial evaluation (docs/method.md, section 6): scores, maps and metric rows
under one :class:`~patchguard.adversarial.settings.AttackSettings`."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..adversarial import standard
from ..adversarial.attackable import (
    AttackableDetector,
    CallableDetector,
    PatchLogitDetector,
    as_detector,
)
from ..adversarial.attacks import DEFAULT_WORST_MEMBERS, attack_per_metric
from ..adversarial.early_stop import ImageStop, ScoreBounds
from ..adversarial.names import ATTACK_NAMES, OBJECTIVE_NAMES, QUERY_ATTACKS
from ..adversarial.objectives import PATCH_OBJECTIVES
from ..adversarial.problem import AttackProblem
from ..adversarial.settings import AttackSettings
from ..adversarial.standard import IMAGE_OBJECTIVE, Member
from ..config import TrainConfig
from ..data.datasets import TestDataset, load_test_set
from ..models.factory import load_model
from ..models.patchguard import PatchGuard, patch_targets
from ..utils.checks import InputError, choice
from ..utils.device import resolve_device
from .metrics import compute_all

logger = logging.getLogger(__name__)

TARGETS_MASKS = "ground-truth masks"
TARGETS_ALL_ONES = "all-ones for anomalous images (no pixel masks)"


@dataclass
class Predictions:
    """Per-image scores and per-pixel maps of one evaluation pass."""

    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)
    # (n, H, W) float32; NaN for the batches in which an early-stopped standard skipped
    # images (no pixel metric is reported then, and these predictions are never returned)
    maps: np.ndarray
    masks: np.ndarray  # (n, H, W) bool
    paths: list[str]
    images: np.ndarray | None = None  # (n, H, W, 3) uint8, adversarial inputs when kept
    # For ``standard``: per image, the index of the member that gave its image-level and its
    # pixel-level worst case (see patchguard.adversarial.standard).
    image_members: np.ndarray | None = None
    pixel_members: np.ndarray | None = None
    # Images sent through the detector by the attack (a forward with or without a backward).
    passes: int | None = None


def attack_targets(batch: dict[str, Any], patch_size: int | None, device: torch.device
                   ) -> torch.Tensor | None:
    """Patch targets for the attack: from masks, or all ones for anomalous images without masks.

    All-zero targets for an anomalous image would make the attack *raise* its score (the
    objective favours normal-patch scores), inflating the attacked AUROC. None for a detector
    without patch logits (``patch_size`` None): its objectives use masks and labels only.
    """
    if patch_size is None:
        return None
    masks = batch["mask"].to(device)
    targets = patch_targets(masks, patch_size)
    labels = torch.as_tensor(batch["label"], device=device).bool()
    has_mask = torch.as_tensor(batch["has_mask"], device=device).bool()
    # An anomalous image whose mask is absent, or vanished when resized, is all-anomalous.
    no_mask_anomalous = labels & (~has_mask | (targets.sum(dim=1) == 0))
    targets[no_mask_anomalous] = 1.0
    return targets


class DecodedTestSet(Dataset):
    """A test set decoded and resized once and kept in memory, for several evaluation passes.

    Images are kept as the uint8 values they were decoded to and masks as booleans (about
    0.2 MB per image at 224 px), so every sample is bit-identical to the source set's. It also
    remembers clean predictions per model state (:meth:`clean_predictions`), so an evaluation
    followed by sanity checks on the same test set scores the clean images once.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, dataset: Dataset, workers: int = 0) -> None:
        self.records = list(getattr(dataset, "records", []))
        self.image_size = getattr(dataset, "image_size", None)
        self.has_pixel_masks = bool(dataset.has_pixel_masks)
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
        self.samples: list[dict[str, Any]] = []
        for sample in loader:
            image, mask = sample["image"], sample["mask"]
            stored = {**sample, "image": _compact(image, 255), "mask": _compact(mask, 1)}
            self.samples.append(stored)
        self._clean: dict[tuple, tuple[weakref.ref, Predictions]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return {**sample, "image": _expand(sample["image"], 255),
                "mask": _expand(sample["mask"], 1)}

    def clean_predictions(self, model: nn.Module, key: tuple,
                          compute: Callable[[], Predictions]) -> Predictions:
        """``compute()`` once per model state and ``key``; later calls return the stored result.

        A model state is the model object and a digest of every parameter and buffer (one pass
        over the weights, far cheaper than a pass over the test set), so any change of the
        weights, however it was made, scores the images again.
        """
        full_key = (id(model), weights_digest(model), *key)
        stored = self._clean.get(full_key)
        if stored is not None and stored[0]() is model:
            return stored[1]
        predictions = compute()
        self._clean = {full_key: (weakref.ref(model), predictions)}  # only the latest state
        return predictions


def weights_digest(model: nn.Module) -> str:
    """BLAKE2 digest of the bytes of every parameter and buffer, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _compact(values: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (images, scale 255) or bool (masks, scale 1) when that is exact, else as given."""
    if scale == 1:
        compact = values > 0.5
        exact = torch.equal(compact.float(), values)
    else:
        compact = (values * scale).round().clamp(0, 255).to(torch.uint8)
        exact = torch.equal(_expand(compact, scale), values)
    return compact if exact else values


def _expand(values: torch.Tensor, scale: int) -> torch.Tensor:
    """Float tensor back from :func:`_compact` (the same division as the data sets' own)."""
    if values.dtype == torch.bool:
        return values.float()
    if values.dtype == torch.uint8:
        return values.float().div_(float(scale))
    return values


# Decoded test sets by source data set, so that every evaluation of one test set object (an
# evaluation, then its sanity checks) decodes it once.
_DECODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoded(dataset: Dataset, workers: int = 0) -> DecodedTestSet:
    """The decoded form of ``dataset`` (made once per data set object and list of records)."""
    if isinstance(dataset, DecodedTestSet):
        return dataset
    cached = _DECODED.get(dataset)
    records = list(getattr(dataset, "records", []))
    if cached is None or cached.records != records:
        cached = DecodedTestSet(dataset, workers)
        _DECODED[dataset] = cached
    return cached


@dataclass(frozen=True)
class PassOptions:
    """How one pass over a test set runs, apart from what it attacks: the device, whether the
    (adversarial) input images are kept, and the progress bar."""

    device: torch.device
    keep_images: bool = False
    progress: bool = True
    desc: str = ""
    # The clean pass of the same test set and batches, when there is one: standard reads its
    # clean scores instead of scoring the clean images again.
    clean: Predictions | None = None
    # Exact early stopping of standard (see adversarial.early_stop); needs ``clean``.
    early_stop: bool = False


def predict_dataset(
    model: Any,
    dataset: TestDataset,
    epsilon: float = 0.0,
    steps: int | None = None,
    *,
    settings: AttackSettings | None = None,
    device: torch.device | str = "cpu",
    keep_images: bool = False,
    progress: bool = True,
    desc: str = "",
    **options: Any,
) -> Predictions:
    """Score every test image, clean (epsilon 0) or attacked at ``epsilon`` (1/255 units).

    ``model`` is PatchGuard or any detector (:func:`patchguard.adversarial.attackable.as_detector`);
    the attack is the first of ``settings.attacks`` (default: the paper's PGD with the mask
    objective); ``steps`` and any :class:`~patchguard.adversarial.settings.AttackSettings`
    field given as a keyword (``attack``, ``batch_size``, ``objective``, ``queries``,
    ``standard_members``, ...) replace those of ``settings``. Scores come from the image-metric
    adversarials and maps from the pixel-metric ones; they differ only for ``standard``, whose
    kept images are the pixel-metric ones.
    """
    settings = AttackSettings.build(settings, **options,
                                    **({} if steps is None else {"steps": steps}))
    run = PassOptions(torch.device(device), keep_images, progress, desc)
    detector = as_detector(model)
    owner = _state_owner(detector)
    attack = settings.attacks[0]
    if epsilon <= 0 and owner is not None and isinstance(dataset, DecodedTestSet):
        key = (settings.batch_size, str(run.device), keep_images, _function_key(detector))
        return dataset.clean_predictions(
            owner, key, lambda: _predict(detector, dataset, 0.0, attack, settings, run))
    return _predict(detector, dataset, epsilon, attack, settings, run)


def _state_owner(detector: AttackableDetector) -> nn.Module | None:
    """The module whose weights decide the detector's outputs, when that is knowable.

    Clean predictions are remembered per state of this module; a plain function with no module
    behind it (its outputs may depend on anything) is scored again every time.
    """
    if isinstance(detector, PatchLogitDetector):
        return detector.model
    if isinstance(detector, CallableDetector):
        function = detector.function
        if isinstance(function, nn.Module):
            return function
        if isinstance(getattr(function, "__self__", None), nn.Module):
            return function.__self__
    return None


def _function_key(detector: AttackableDetector) -> str:
    """Which function of the state owner scores (a module may offer several)."""
    function = getattr(detector, "function", None)
    if function is None:
        return type(detector).__name__
    return getattr(getattr(function, "__func__", function), "__qualname__", type(function).__name__)


def _predict(detector: AttackableDetector, dataset: Dataset, epsilon: float, attack: str,
             settings: AttackSettings, run: PassOptions) -> Predictions:
    """One pass over ``dataset``: clean, or ``attack`` at ``epsilon`` under ``settings``."""
    from tqdm.auto import tqdm

    device = run.device
    generator = torch.Generator().manual_seed(settings.seed)  # random starts, reproducible
    # standard: each member draws the numbers it would draw run alone with this seed.
    own_generators = (standard.member_generators(settings.standard_members, settings.seed)
                      if attack == "standard" else None)
    budget = settings.budget(attack, generator, own_generators)
    # standard's members bring their own objectives; the problem's is not used.
    objective = IMAGE_OBJECTIVE if attack == "standard" else settings.objective
    clean = run.clean if attack == "standard" and epsilon > 0 else None
    bounds = (ScoreBounds(torch.from_numpy(clean.scores), torch.from_numpy(clean.labels))
              if clean is not None and run.early_stop else None)
    detector.eval()
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=False,
                        num_workers=settings.workers, pin_memory=device.type == "cuda")
    scores, labels, maps, masks, paths, images = [], [], [], [], [], []
    image_members, pixel_members = [], []
    passes, start = 0, 0
    for batch in tqdm(loader, desc=run.desc or "evaluating", disable=not run.progress,
                      leave=False):
        x = x_pixel = batch["image"].to(device)
        rows = torch.arange(start, start + len(x))
        start += len(x)
        if epsilon > 0:
            problem = AttackProblem(detector, x, attack_targets(batch, detector.patch_size,
                                                                device),
                                    torch.as_tensor(batch["label"], device=device),
                                    epsilon / 255.0, objective, batch["mask"].to(device))
            if clean is not None:
                problem.clean_scores = torch.from_numpy(clean.scores[rows.numpy()]).to(device)
            if bounds is not None:
                problem.stop = ImageStop(bounds, rows, device)
            result = attack_per_metric(attack, problem, budget)
            passes += problem.passes[0]
            x, x_pixel = result.image, result.pixel
            if result.image_member is not None and result.pixel_member is not None:
                image_members.append(result.image_member.cpu().numpy())
                pixel_members.append(result.pixel_member.cpu().numpy())
        if epsilon > 0 and result.image_scores is not None:
            # standard scored its image worst cases already (the same eval-mode pass), and
            # kept the maps of its pixel worst cases from the pass that chose them
            score = result.image_scores
            if result.pixel_maps is not None:
                pixel_map = result.pixel_maps
            elif bounds is not None:
                # Early stopping skipped images (it runs only where no pixel metric is
                # reported): no pass for maps nothing reads, NaN says they were not computed.
                pixel_map = torch.full((len(x), *clean.maps.shape[1:]), math.nan)
            else:
                pixel_map = detector.predict(x_pixel)[1]
        else:
            score, pixel_map = detector.predict(x)
            if x_pixel is not x:  # image and pixel metrics have separate worst cases
                _, pixel_map = detector.predict(x_pixel)
        scores.append(score.cpu().numpy())
        maps.append(pixel_map.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        masks.append(batch["mask"][:, 0].numpy() > 0)
        paths.extend(batch["path"])
        if run.keep_images:
            images.append((x_pixel.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round()
                          .astype(np.uint8))
    return Predictions(
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
        maps=np.concatenate(maps),
        masks=np.concatenate(masks),
        paths=paths,
        images=np.concatenate(images) if run.keep_images else None,
        image_members=np.concatenate(image_members) if image_members else None,
        pixel_members=np.concatenate(pixel_members) if pixel_members else None,
        passes=passes if epsilon > 0 else None,
    )


def evaluate(
    model: Any,
    dataset: TestDataset,
    settings: AttackSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Metrics for clean inputs (eps 0) and each attack at each eps (in 1/255 units).

    ``model`` is PatchGuard or any detector (see :func:`predict_dataset`); ``settings`` says
    which attacks at which epsilons with which budgets (default
    :class:`~patchguard.adversarial.settings.AttackSettings`: the paper's PGD-10 at 8/255);
    its fields may also be given as keywords (``epsilons=(0, 2, 8), attacks=("standard",)``).
    """
    settings = AttackSettings.build(settings, **options)
    return _evaluate(model, dataset, settings, device, progress, keep_images=False,
                     keep_predictions=False)[0]


def evaluate_with_predictions(
    model: Any,
    dataset: TestDataset,
    settings: AttackSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    keep_images: bool = False,
    **options: Any,
) -> tuple[list[dict[str, Any]], dict[float, Predictions]]:
    """Like :func:`evaluate`, also returning predictions per epsilon (of the first attack)."""
    settings = AttackSettings.build(settings, **options)
    return _evaluate(model, dataset, settings, device, progress, keep_images,
                     keep_predictions=True)


def _evaluate(model: Any, dataset: TestDataset, settings: AttackSettings,
              device: torch.device | str, progress: bool, keep_images: bool,
              keep_predictions: bool) -> tuple[list[dict[str, Any]], dict[float, Predictions]]:
    """The rows of every pass and the predictions of the clean and the first attack's."""
    device = torch.device(device)
    detector = as_detector(model)
    check_attacks(settings.attacks, settings.objective, detector.has_patch_logits)
    targets_ok = dataset.has_pixel_masks  # the masks steer the attacks whatever is reported
    pixel_ok = targets_ok and settings.pixel_metrics
    if not targets_ok and settings.pixel_metrics:
        logger.warning("the test set has no pixel masks for its anomalous images: pixel AUROC is "
                       "reported as null and attacks use all-ones patch targets for them")
    rows, predictions = [], {}
    passes = [("clean", 0.0)] if 0 in settings.epsilons else []
    passes += [(name, float(eps)) for name in settings.attacks
               for eps in settings.attacked_epsilons()]
    if len(passes) > 1 or dataset in _DECODED:
        dataset = decoded(dataset, settings.workers)  # decode and resize once for every pass
    for attack, eps in passes:
        attacked = eps > 0
        started = time.perf_counter()
        desc = _description(attack, settings, eps)
        if attacked:
            early = early_stopping(settings, attack, pixel_ok, keep_images,
                                   keep_predictions and attack == settings.attacks[0])
            clean = predictions.get(0.0)
            if clean is None and (early or attack == "standard"):
                clean = predict_dataset(detector, dataset, 0.0, settings=settings,
                                        device=device, progress=False)
            run = PassOptions(device, keep_images, progress, desc, clean, early)
            preds = _predict(detector, dataset, eps, attack, settings, run)
        else:
            preds = predict_dataset(detector, dataset, eps, settings=settings, device=device,
                                    keep_images=keep_images, progress=progress, desc=desc)
        seconds = time.perf_counter() - started
        if attack in ("clean", settings.attacks[0]):
            predictions[eps] = preds
        metrics = compute_all(preds.labels, preds.scores,
                              preds.masks if pixel_ok else None, preds.maps if pixel_ok else None)
        rows.append({
            "attack": attack,
            "epsilon": eps,
            **attack_fields(attack, settings, attacked, detector.has_patch_logits),
            # compute_all takes every pixel metric from one sort of all pixels (its pixel AUROC
            # equals auroc() up to float rounding): no second sort for the AUROC.
            "image_auroc": metrics["image_auroc"],
            "pixel_auroc": metrics["pixel_auroc"] if pixel_ok else None,
            **{k: v for k, v in metrics.items() if k not in ("image_auroc", "pixel_auroc")},
            "n_images": int(len(preds.scores)),
            "n_anomalous": int(preds.labels.sum()),
            "targets": (TARGETS_MASKS if targets_ok else TARGETS_ALL_ONES) if attacked else None,
            "seconds": round(seconds, 3),
            "images_per_s": round(len(preds.scores) / seconds, 4) if seconds > 0 else None,
            **_worst_sources(preds, detector.has_patch_logits, settings.standard_members),
        })
        if preds.passes is not None:
            rows[-1]["passes_per_image"] = round(preds.passes / max(len(preds.scores), 1), 2)
        if attack == "standard" and attacked:
            logger.info("standard at eps %g/255: %.4g images/s (%d images, %.1f s, %.0f passes "
                        "per image, early stopping %s)", eps, rows[-1]["images_per_s"],
                        rows[-1]["n_images"], seconds, rows[-1]["passes_per_image"],
                        "on" if early else "off")
    return rows, predictions


def early_stopping(settings: AttackSettings, attack: str, pixel_metrics: bool,
                   keep_images: bool, returns_scores: bool) -> bool:
    """Whether ``attack`` stops early: only ``standard``, only when asked, and only where no
    reported number can change. Every pixel metric may depend on any member's full result
    (there is no exact rule for them), and kept images and returned per-image scores are
    reported per image, so any of these keeps every image attacked to the full budget."""
    return (settings.early_stop and attack == "standard" and not pixel_metrics
            and not keep_images and not returns_scores)


STANDARD_OBJECTIVE = "score (image metrics) / map (pixel metrics)"
CUSTOM_STANDARD = "custom members: not the citable standard budgets"


def check_attacks(attacks: Sequence[str], objective: str, patch_logits: bool) -> None:
    """Refuse unknown attacks or objectives, and ``mask`` for a detector without patch logits."""
    if isinstance(attacks, str) or not attacks:
        raise InputError("attacks (--attack)", attacks, "must be a non-empty list of attack "
                         "names", f"choose from {', '.join(ATTACK_NAMES)}")
    for name in attacks:
        choice("attacks (--attack)", name, ATTACK_NAMES)
    choice("objective (--objective)", objective, OBJECTIVE_NAMES)
    uses_objective = [a for a in attacks if a != "standard"]
    if objective in PATCH_OBJECTIVES and uses_objective and not patch_logits:
        raise InputError("objective (--objective)", objective,
                         "needs a detector with patch logits (PatchGuard's); this detector "
                         "gives image scores and maps only", "use score or map")


def _description(attack: str, settings: AttackSettings, eps: float) -> str:
    """Progress-bar label of one evaluation setting."""
    if eps <= 0:
        return "clean"
    if attack == "standard":
        return f"standard eps {eps:g}/255"
    budget = (f"{settings.query_budget} queries" if attack in QUERY_ATTACKS
              else f"{settings.steps} steps")
    return f"{attack} ({budget}) eps {eps:g}/255"


def attack_fields(attack: str, settings: AttackSettings, attacked: bool,
                  patch_logits: bool = True) -> dict[str, Any]:
    """The row fields that say how an attack was run (the fixed members for ``standard``)."""
    if not attacked:
        return {"steps": 0, "objective": None, "restarts": 0, "queries": None, "members": None}
    if attack == "standard":
        members = settings.standard_members
        run, skipped = standard.standard_members(patch_logits, members)
        fields = {"steps": max(m.steps for m in run), "objective": STANDARD_OBJECTIVE,
                  "restarts": 1, "queries": max(m.queries or 0 for m in run) or None,
                  "members": standard.describe_members(run),
                  # Only the fixed members make the citable number.
                  "standard_budget": ("fixed" if members is None
                                      or tuple(members) == standard.STANDARD_MEMBERS
                                      else CUSTOM_STANDARD)}
        if skipped:
            fields["members_skipped"] = (f"{standard.describe_members(skipped)} "
                                         f"({standard.SKIPPED_NO_PATCH_LOGITS})")
        return fields
    return {
        # Square takes no gradient steps, only queries.
        "steps": 0 if attack in QUERY_ATTACKS else settings.steps,
        "objective": settings.objective,
        "restarts": settings.restarts,
        "queries": settings.query_budget if attack in QUERY_ATTACKS else None,
        "members": ", ".join(DEFAULT_WORST_MEMBERS) if attack == "worst" else None,
    }


def _worst_sources(preds: Predictions, patch_logits: bool,
                   standard_members: Sequence[Member] | None = None) -> dict[str, Any]:
    """For ``standard`` rows: per member, how many images' worst case it gave, per metric."""
    if preds.image_members is None or preds.pixel_members is None:
        return {}
    names = [m.describe() for m in standard.standard_members(patch_logits, standard_members)[0]]
    names.append("clean")  # the image metrics' worst case may be the clean image itself

    def counts(chosen: np.ndarray) -> str:
        return ", ".join(f"{name} {int((chosen == i).sum())}" for i, name in enumerate(names)
                         if name != "clean" or (chosen == i).any())

    return {"image_worst_from": counts(preds.image_members),
            "pixel_worst_from": counts(preds.pixel_members)}


@dataclass
class CheckpointUnderTest:
    """A checkpoint's model and the test set it is evaluated on (defaults: its training data)."""

    model: PatchGuard
    state: dict[str, Any]
    test_set: TestDataset
    dataset: str
    dataset_dir: str
    class_name: str
    device: torch.device


def load_for_evaluation(
    checkpoint: str | Path,
    dataset: str | None = None,
    dataset_dir: str | Path | None = None,
    class_name: str | None = None,
    device: str | torch.device = "auto",
) -> CheckpointUnderTest:
    """Load a checkpoint and its test set; data set, folder and class default to the training's."""
    torch_device = resolve_device(device)
    model, state = load_model(checkpoint, torch_device)
    config = TrainConfig.from_dict(state["config"], source=str(checkpoint))
    dataset = dataset or config.dataset
    dataset_dir = str(dataset_dir or config.dataset_dir)
    class_name = class_name or config.class_name
    if not dataset_dir or not class_name:  # imported checkpoints record no training data
        raise InputError("dataset_dir (--dataset-dir)" if not dataset_dir else
                         "class_name (--class-name)", "", f"is not recorded in {checkpoint}",
                         "give --dataset-dir and --class-name of the test data")
    test_set = load_test_set(dataset, dataset_dir, class_name, config.image_size)
    return CheckpointUnderTest(model, state, test_set, dataset, dataset_dir, class_name,
                               torch_device)
