"""Clean and adversarial evaluation (METHOD.md section 6): scores, maps and metric rows."""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..adversarial.attacks import run_attack
from ..config import TrainConfig
from ..data.datasets import TestDataset, load_test_set
from ..models.factory import load_model
from ..models.patchguard import PatchGuard, patch_targets
from ..utils.checks import InputError, attack_settings
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
    maps: np.ndarray  # (n, H, W) float32
    masks: np.ndarray  # (n, H, W) bool
    paths: list[str]
    images: np.ndarray | None = None  # (n, H, W, 3) uint8, adversarial inputs when kept


def attack_targets(batch: dict[str, Any], patch_size: int, device: torch.device) -> torch.Tensor:
    """Patch targets for the attack: from masks, or all ones for anomalous images without masks.

    All-zero targets for an anomalous image would make the attack *raise* its score (the
    objective favours normal-patch scores), inflating the attacked AUROC.
    """
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


def predict_dataset(
    model: PatchGuard,
    dataset: TestDataset,
    epsilon: float = 0.0,
    steps: int = 10,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    workers: int = 0,
    keep_images: bool = False,
    progress: bool = True,
    desc: str = "",
    attack: str = "pgd",
    objective: str = "mask",
    restarts: int = 1,
    seed: int = 0,
) -> Predictions:
    """Score every test image, clean (epsilon 0) or attacked at ``epsilon`` (1/255 units).

    ``attack`` is a name of :data:`patchguard.adversarial.attacks.ATTACKS`; the default is the
    faithful PGD with the mask objective of METHOD.md.
    """
    device = torch.device(device)
    if epsilon <= 0 and isinstance(dataset, DecodedTestSet):
        return dataset.clean_predictions(
            model, (batch_size, str(device), keep_images),
            lambda: _predict(model, dataset, 0.0, steps, batch_size, device, workers,
                             keep_images, progress, desc, attack, objective, restarts, seed))
    return _predict(model, dataset, epsilon, steps, batch_size, device, workers, keep_images,
                    progress, desc, attack, objective, restarts, seed)


def _predict(model, dataset, epsilon, steps, batch_size, device, workers, keep_images, progress,
             desc, attack, objective, restarts, seed) -> Predictions:
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)  # random starts, reproducible
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    scores, labels, maps, masks, paths, images = [], [], [], [], [], []
    for batch in tqdm(loader, desc=desc or "evaluating", disable=not progress, leave=False):
        x = batch["image"].to(device)
        if epsilon > 0:
            targets = attack_targets(batch, model.patch_size, device)
            batch_labels = torch.as_tensor(batch["label"], device=device)
            x, _ = run_attack(attack, model, x, targets, batch_labels, epsilon / 255.0, steps,
                              objective=objective, restarts=restarts,
                              masks=batch["mask"].to(device), generator=generator)
        score, pixel_map = model.predict(x)
        scores.append(score.cpu().numpy())
        maps.append(pixel_map.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        masks.append(batch["mask"][:, 0].numpy() > 0)
        paths.extend(batch["path"])
        if keep_images:
            images.append((x.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round()
                          .astype(np.uint8))
    return Predictions(
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
        maps=np.concatenate(maps),
        masks=np.concatenate(masks),
        paths=paths,
        images=np.concatenate(images) if keep_images else None,
    )


def evaluate(
    model: PatchGuard,
    dataset: TestDataset,
    epsilons: Sequence[float] = (0, 8),
    steps: int = 10,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    attacks: Sequence[str] = ("pgd",),
    objective: str = "mask",
    restarts: int = 1,
) -> list[dict[str, Any]]:
    """Metrics for clean inputs (eps 0) and each attack at each eps (in 1/255 units)."""
    rows, _ = evaluate_with_predictions(model, dataset, epsilons, steps, batch_size, device,
                                        workers, progress, attacks=attacks,
                                        objective=objective, restarts=restarts)
    return rows


def evaluate_with_predictions(
    model: PatchGuard,
    dataset: TestDataset,
    epsilons: Sequence[float] = (0, 8),
    steps: int = 10,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    keep_images: bool = False,
    attacks: Sequence[str] = ("pgd",),
    objective: str = "mask",
    restarts: int = 1,
) -> tuple[list[dict[str, Any]], dict[float, Predictions]]:
    """Like :func:`evaluate`, also returning predictions per epsilon (of the first attack)."""
    epsilons = attack_settings(epsilons, steps, batch_size, restarts, workers)
    pixel_ok = dataset.has_pixel_masks
    if not pixel_ok:
        logger.warning("the test set has no pixel masks for its anomalous images: pixel AUROC is "
                       "reported as null and attacks use all-ones patch targets for them")
    rows, predictions = [], {}
    settings = [("clean", 0.0)] if 0 in epsilons else []
    settings += [(name, float(eps)) for name in attacks for eps in epsilons if eps > 0]
    if len(settings) > 1 or dataset in _DECODED:
        dataset = decoded(dataset, workers)  # decode and resize once for every pass
    for attack, eps in settings:
        attacked = eps > 0
        preds = predict_dataset(
            model, dataset, eps, steps, batch_size, device, workers, keep_images=keep_images,
            progress=progress, attack=attack, objective=objective, restarts=restarts,
            desc=f"{attack} ({steps} steps) eps {eps:g}/255" if attacked else "clean",
        )
        if attack in ("clean", attacks[0]):
            predictions[eps] = preds
        metrics = compute_all(preds.labels, preds.scores,
                              preds.masks if pixel_ok else None, preds.maps if pixel_ok else None)
        rows.append({
            "attack": attack,
            "epsilon": eps,
            "steps": int(steps) if attacked else 0,
            "objective": objective if attacked else None,
            "restarts": int(restarts) if attacked else 0,
            # compute_all takes every pixel metric from one sort of all pixels (its pixel AUROC
            # equals auroc() up to float rounding): no second sort for the AUROC.
            "image_auroc": metrics["image_auroc"],
            "pixel_auroc": metrics["pixel_auroc"] if pixel_ok else None,
            **{k: v for k, v in metrics.items() if k not in ("image_auroc", "pixel_auroc")},
            "n_images": int(len(preds.scores)),
            "n_anomalous": int(preds.labels.sum()),
            "targets": (TARGETS_MASKS if pixel_ok else TARGETS_ALL_ONES) if attacked else None,
        })
    return rows, predictions


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
