"""The torch datasets: training images with their pseudo-anomalous twins, and test images with
labels and ground-truth masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import image_dimensions, read_image, read_mask, resize_image, resize_mask
from .layouts import load_records
from .pseudo_anomaly import PseudoAnomalyGenerator
from .records import DatasetError, SampleRecord


class TrainSample(TypedDict):
    """What the training dataset yields per image (tensors in [0, 1])."""

    image: torch.Tensor  # (3, H, W) clean normal image
    pseudo_image: torch.Tensor  # (3, H, W) its pseudo-anomalous twin
    pseudo_mask: torch.Tensor  # (1, H, W) 0/1, the pasted region
    index: int


class TestSample(TypedDict):
    """What the test dataset yields per image."""

    image: torch.Tensor  # (3, H, W)
    label: int
    mask: torch.Tensor  # (1, H, W) 0/1; zeros when the image has no mask
    has_mask: bool
    path: str
    defect_type: str


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) to float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-sample generator: the same draws whatever the worker count or resume point."""
    return np.random.default_rng([seed, epoch, index])


class TrainDataset(Dataset):
    """Normal training images and their pseudo-anomalous twins, made in DataLoader workers.

    Images and foreground masks are decoded and resized once, up front; pseudo anomalies are
    generated per access from a generator seeded by (seed, epoch, index), so a run is
    reproducible for any number of workers and resumes exactly.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        image_size: int,
        generator: PseudoAnomalyGenerator,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        self.records = list(records)
        self.image_size = image_size
        self.generator = generator
        self.seed = seed
        self.epoch = 0
        self.images: list[np.ndarray] = []
        self.foregrounds: list[np.ndarray | None] = []
        with_fg = 0
        iterator = tqdm(self.records, desc="loading train images", disable=not progress)
        for record in iterator:
            self.images.append(resize_image(read_image(record.path), image_size))
            if record.foreground_path is not None:
                fg = resize_mask(read_mask(record.foreground_path), image_size) > 0
                self.foregrounds.append(fg)
                with_fg += 1
            else:
                self.foregrounds.append(None)
        self.foreground_count = with_fg

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pseudo anomalies are drawn (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> TrainSample:
        # An (epoch, index) pair comes from a sampler that carries the epoch, so that loader
        # workers kept alive across epochs (which never see set_epoch) draw that epoch's samples.
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        image = self.images[index]
        rng = sample_rng(self.seed, epoch, index)
        pseudo, mask = self.generator(image, self.foregrounds[index], rng)
        return TrainSample(
            image=to_tensor(image),
            pseudo_image=to_tensor(pseudo),
            pseudo_mask=torch.from_numpy(mask.astype(np.float32))[None],
            index=index,
        )


class TestDataset(Dataset):
    """Test images with labels and ground-truth masks, resized like training images."""

    __test__ = False  # not a pytest test class

    def __init__(self, records: Sequence[SampleRecord], image_size: int) -> None:
        self.records = list(records)
        self.image_size = image_size

    @property
    def has_pixel_masks(self) -> bool:
        """True when every anomalous image has a ground-truth mask (pixel metrics are defined)."""
        anomalous = [r for r in self.records if r.label == 1]
        return bool(anomalous) and all(r.mask_path is not None for r in anomalous)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> TestSample:
        record = self.records[index]
        image = resize_image(read_image(record.path), self.image_size)
        if record.mask_path is not None:
            raw = read_mask(record.mask_path, ground_truth=True)
            if raw.shape[:2] != image_dimensions(record.path)[::-1]:
                raise DatasetError(
                    f"mask {record.mask_path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                    f"{record.path} is not; masks must match their images"
                )
            # Faithful: LANCZOS then any non-zero pixel is anomalous (slightly grows masks).
            mask = resize_mask(raw, self.image_size, Image.LANCZOS)
        else:
            mask = np.zeros((self.image_size, self.image_size), dtype=np.float32)
        return TestSample(
            image=to_tensor(image),
            label=record.label,
            mask=torch.from_numpy(mask)[None],
            has_mask=record.mask_path is not None,
            path=str(record.path),
            defect_type=record.defect_type,
        )


def load_test_set(dataset: str, root: str | Path, class_name: str, image_size: int) -> TestDataset:
    """The validated test split of one class as a :class:`TestDataset` at ``image_size``."""
    return TestDataset(load_records(dataset, root, class_name, "test"), image_size)


class TensorTestSet(Dataset):
    """A test set from tensors in memory: images (n, 3, H, W) in [0, 1], labels (n,) 0 normal /
    1 anomalous, and optional masks (n, [1,] H, W), non-zero = anomalous pixel.

    For evaluating a detector on images that are not in a data set folder
    (:func:`patchguard.api.evaluate_detector`); without masks pixel metrics are n/a.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                 masks: torch.Tensor | None = None, names: Sequence[str] | None = None) -> None:
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W), got {tuple(images.shape)}")
        if float(images.min()) < 0 or float(images.max()) > 1:
            raise ValueError("images must be in [0, 1]")
        labels = torch.as_tensor(labels).long().reshape(-1)
        if len(labels) != len(images) or not set(labels.tolist()) <= {0, 1}:
            raise ValueError(f"labels must be {len(images)} values of 0 or 1")
        if masks is not None:
            masks = torch.as_tensor(masks).float()
            masks = masks[:, None] if masks.dim() == 3 else masks
            if masks.shape != (len(images), 1, *images.shape[-2:]):
                raise ValueError(f"masks must have shape (n, [1,] H, W) like the images, got "
                                 f"{tuple(masks.shape)}")
            masks = (masks > 0).float()
        self.images, self.labels, self.masks = images, labels, masks
        self.names = list(names) if names is not None else [f"image_{i:05d}"
                                                            for i in range(len(images))]

    @property
    def has_pixel_masks(self) -> bool:
        """True when masks were given and the set has anomalous images."""
        return self.masks is not None and bool(self.labels.any())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> TestSample:
        mask = (self.masks[index] if self.masks is not None
                else torch.zeros(1, *self.images.shape[-2:]))
        return TestSample(image=self.images[index], label=int(self.labels[index]), mask=mask,
                          has_mask=self.masks is not None, path=self.names[index],
                          defect_type="good" if int(self.labels[index]) == 0 else "anomalous")
