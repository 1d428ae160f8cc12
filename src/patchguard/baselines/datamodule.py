"""patchguard's records as an anomalib datamodule, so that anomalib's Engine trains on them.

anomalib's own ``MVTecAD`` datamodule takes every sub-folder of ``train/`` as a label (it fails
on our ``train/foreground_mask/``) and its ``Folder`` datamodule knows only folder layouts; the
records of any registered layout (:func:`patchguard.data.layouts.load_records`) are read here
instead, decoded and resized exactly as patchguard's test images are (``read_image`` then
LANCZOS to the model size), so that the baseline is trained and attacked on the same pixels.

This module imports anomalib at import time: import it only after
:func:`patchguard.baselines.anomalib.require_anomalib`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from anomalib import TaskType
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from pandas import DataFrame
from torchvision import tv_tensors

from ..data.images import read_image, resize_image
from ..data.records import SampleRecord


class RecordsDataset(AnomalibDataset):
    """Images of a list of records as anomalib items (image and label; no masks: training only)."""

    def __init__(self, records: Sequence[SampleRecord], image_size: int, split: str) -> None:
        super().__init__(augmentations=None)
        self.image_size = image_size
        samples = DataFrame({
            "image_path": [str(r.path) for r in records],
            "label_index": [int(r.label) for r in records],
            "label": ["abnormal" if r.label else "normal" for r in records],
            "mask_path": ["" for _ in records],
            "split": [split] * len(records),
        })
        samples.attrs["task"] = TaskType.CLASSIFICATION
        self.samples = samples  # anomalib's setter checks the columns and sorts by path

    def __getitem__(self, index: int) -> ImageItem:
        row = self.samples.iloc[index]
        image = resize_image(read_image(row.image_path), self.image_size)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        image = tv_tensors.Image(tensor)
        if self.augmentations is not None:  # the model's Resize, a no-op at this size
            image = self.augmentations(image)
        return ImageItem(image=image, gt_label=torch.tensor(int(row.label_index)),
                         image_path=row.image_path)


class RecordsDataModule(AnomalibDataModule):
    """Training records (normal images) and held-out validation records for anomalib's Engine.

    Validation is what anomalib's models use to finish fitting: PatchCore and PaDiM fit their
    memory bank / Gaussian when validation starts, EfficientAd takes its map quantiles from the
    normal validation images. patchguard evaluates on the test split itself, so the "test" data
    here is only a placeholder.
    """

    def __init__(self, train: Sequence[SampleRecord], val: Sequence[SampleRecord],
                 image_size: int, train_batch_size: int, name: str = "",
                 eval_batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(train_batch_size=train_batch_size, eval_batch_size=eval_batch_size,
                         num_workers=0, seed=seed)
        self._records = (list(train), list(val))
        self.image_size = image_size
        self._category = name

    def _setup(self, _stage: str | None = None) -> None:
        train, val = self._records
        self.train_data = RecordsDataset(train, self.image_size, "train")
        self.val_data = RecordsDataset(val, self.image_size, "val")
        self.test_data = self.val_data

    def _create_test_split(self) -> None:
        """The subsets are given: no split of the test set."""

    def _create_val_split(self) -> None:
        """The subsets are given: no split of the training set."""
