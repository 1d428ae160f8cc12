"""Training for ``head: knn``: no optimiser, one pass that fills the patch memory bank.

The bank holds the patch features of every training image at the detector's layer(s) (or a
greedy / random coreset of ``knn_bank_size`` of them); the held-out normal images
(``val_fraction``) set the decision thresholds as for PatchGuard. The checkpoint has the layout
of a training checkpoint without the optimiser state, so ``test``, ``predict`` and ``info``
take it and ``--resume`` says it has nothing to resume.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.datasets import TestDataset
from ..data.layouts import load_records
from ..models.factory import build_model
from ..models.knn import PatchKNN, select_coreset
from ..utils.checkpoint import save_checkpoint
from ..utils.device import resolve_device
from ..version import __version__
from .heldout import split_validation, validation_thresholds

logger = logging.getLogger(__name__)


@torch.no_grad()
def bank_features(model: PatchKNN, dataset: TestDataset, batch_size: int,
                  device: torch.device, progress: bool = False) -> torch.Tensor:
    """Patch features (M, D) of every image of ``dataset``, in order."""
    from tqdm.auto import tqdm

    model.eval()
    rows = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, disable=not progress, desc="memory bank", unit="batch",
                      leave=False):
        images = torch.stack([dataset[i]["image"] for i in
                              range(start, min(start + batch_size, len(dataset)))])
        features = model.patch_features(images.to(device))
        rows.append(features.reshape(-1, features.shape[-1]).cpu())
    return torch.cat(rows)


def build_memory_bank(config: TrainConfig, progress: bool = True) -> Path:
    """Fill a kNN model's bank from the class's training images; write ``last.pt`` (the
    held-out split and the thresholds are PatchGuard's own)."""
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    records = load_records(config.dataset, config.dataset_dir, config.class_name, "train")
    records, val_records = split_validation(records, config.val_fraction, config.seed)
    model, weight_source = build_model(config)
    model.to(device)
    features = bank_features(model, TestDataset(records, config.image_size), config.batch_size,
                             device, progress)
    chosen = select_coreset(features, config.knn_bank_size, config.knn_coreset, config.seed)
    model.set_bank(features[chosen])
    logger.info("kNN memory bank: %d of %d training patches (%s) from %d images; backbone "
                "weights: %s", len(chosen), len(features),
                config.knn_coreset if len(chosen) < len(features) else "all", len(records),
                weight_source)
    extra = {"weight_source": weight_source,
             "train_summary": {"dataset": config.dataset, "class_name": config.class_name,
                               "n_train_images": len(records),
                               "n_validation_images": len(val_records),
                               "bank_patches": len(chosen), "training_patches": len(features)}}
    if val_records:
        extra.update(validation_thresholds(model, val_records, config, device, progress))
    record = {"epoch": 1, "seconds": time.perf_counter() - started,
              "cpu_seconds": time.process_time() - cpu_started, "bank_patches": len(chosen)}
    with (out_dir / "train_log.jsonl").open("w") as handle:
        handle.write(json.dumps(record) + "\n")
    last = out_dir / "last.pt"
    save_checkpoint(last, {"model": model.state_dict(), "epoch": config.epochs,
                           "config": config.to_dict(), "patchguard_version": __version__,
                           **extra})
    return last
