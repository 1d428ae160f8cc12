"""Data sets: layout readers, robust image loading, and the train/test torch datasets.

MVTec AD is read here; every other data set of the paper and the generic ``folder`` layout live
in :mod:`patchguard.layouts`, which registers them in :data:`LAYOUTS`. A layout is a function
``(root, class_name, split) -> list[SampleRecord]``; registering another layout in
:data:`LAYOUTS` is all a new data set format needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .pseudo_anomaly import PseudoAnomalyGenerator

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message names the files and the fix."""


@dataclass(frozen=True)
class SampleRecord:
    """One image on disk with its label and optional masks."""

    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"
    mask_path: Path | None = None
    foreground_path: Path | None = None


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


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside folder, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read any common image (grayscale, RGBA, palette, 16-bit) as uint8 RGB (H, W, 3)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit scans: map the full 16-bit range to 8 bits instead of PIL's clipping.
                array = np.asarray(img, dtype=np.float64)
                array = np.clip(array / 257.0, 0, 255).astype(np.uint8)
                return np.repeat(array[..., None], 3, axis=2)
            if img.mode == "F":
                array = np.asarray(img, dtype=np.float64)
                span = max(float(array.max() - array.min()), 1e-12)
                array = ((array - array.min()) / span * 255).astype(np.uint8)
                return np.repeat(array[..., None], 3, axis=2)
            if img.mode in ("RGBA", "LA", "P", "PA"):
                # Flatten transparency onto black, as the image would be seen without alpha.
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as error:
        raise DatasetError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DatasetError(
            f"cannot read image {path} ({error}); replace or delete the file"
        ) from error


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a uint8 (H, W) array; any non-zero channel counts as set."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except FileNotFoundError as error:
        raise DatasetError(f"mask file not found: {path}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot read mask {path} ({error}); replace or delete it") from error
    if array.ndim == 3:
        array = array.max(axis=2)
    return (array > 0).astype(np.uint8) * 255


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 RGB image to size x size with LANCZOS (as the original)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.array(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def resize_mask(mask: np.ndarray, size: int, resample: int = Image.NEAREST) -> np.ndarray:
    """Resize a 0/255 mask to size x size and return it as 0/1 float32."""
    if mask.shape[0] != size or mask.shape[1] != size:
        mask = np.asarray(Image.fromarray(mask).resize((size, size), resample))
    return (mask > 0).astype(np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) to float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


# ---------------------------------------------------------------------------- layouts


def _class_dir(root: str | Path, class_name: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data set directory {root} does not exist; check --dataset-dir")
    class_dir = root / class_name
    if not class_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DatasetError(
            f"class folder {class_dir} does not exist; classes found in {root}: "
            f"{', '.join(found) or 'none'}"
        )
    return class_dir


def mvtec_records(root: str | Path, class_name: str, split: str) -> list[SampleRecord]:
    """Records of an MVTec-AD-style class folder (train/good, test/<type>, ground_truth/<type>)."""
    class_dir = _class_dir(root, class_name)
    if split == "train":
        images = list_images(class_dir / "train" / "good")
        if not images:
            raise DatasetError(
                f"no training images in {class_dir / 'train' / 'good'}; the MVTec layout needs "
                "<class>/train/good/*.png"
            )
        fg_dir = class_dir / "train" / "foreground_mask"
        records = []
        for path in images:
            fg = fg_dir / path.name
            if not fg.exists():
                fg = next((p for p in list_images(fg_dir) if p.stem == path.stem), None)
            records.append(SampleRecord(path, 0, "good", foreground_path=fg))
        return records
    if split != "test":
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    test_dir = class_dir / "test"
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    if not defect_dirs:
        raise DatasetError(f"no test folders in {test_dir}; expected test/good and test/<defect>")
    # Masks are looked up by folder components, never by rewriting the whole path (the
    # original's path.replace('test', 'ground_truth') broke when a parent was named 'test').
    gt_dir = class_dir / "ground_truth"
    records, missing = [], []
    for defect_dir in defect_dirs:
        label = 0 if defect_dir.name == "good" else 1
        for path in list_images(defect_dir):
            mask_path = None
            if label and gt_dir.is_dir():
                candidates = [
                    gt_dir / defect_dir.name / f"{path.stem}_mask{ext}"
                    for ext in (".png", path.suffix, ".bmp", ".tif")
                ] + [gt_dir / defect_dir.name / f"{path.stem}.png"]
                mask_path = next((c for c in candidates if c.exists()), None)
                if mask_path is None:
                    missing.append(path)
            records.append(SampleRecord(path, label, defect_dir.name, mask_path=mask_path))
    if missing:
        listed = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{len(missing)} anomalous test image(s) have no mask in {gt_dir}: {listed}{more}. "
            f"Add <stem>_mask.png files, or remove {gt_dir} to evaluate without pixel masks."
        )
    return records


Layout = Callable[[str | Path, str, str], list[SampleRecord]]
LAYOUTS: dict[str, Layout] = {"mvtec": mvtec_records}


def load_records(
    dataset: str, root: str | Path, class_name: str, split: str, validate: bool = True
) -> list[SampleRecord]:
    """Records of one class and split of a registered layout, refused when the layout is broken.

    With ``validate`` (the default) the split is checked by :func:`patchguard.layouts.find_problems`
    (empty split, anomalous images without masks, masks of the wrong size, unreadable files) and
    every problem is reported in one :class:`DatasetError`, as ``patchguard data info`` lists them.
    """
    if dataset not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {dataset!r}; available: {sorted(LAYOUTS)}")
    _layouts.warn_unknown_class(dataset, class_name)
    layout = LAYOUTS[dataset]
    if not validate:
        return layout(root, class_name, split)
    records = _layouts.SCANNERS.get(layout, layout)(root, class_name, split)
    where = _layouts.resolve_class_dir(root, class_name)
    problems = _layouts.find_problems(records, split, where)
    if problems:
        raise DatasetError(_layouts.problems_message(dataset, root, class_name, problems))
    return records


# ---------------------------------------------------------------------------- torch datasets


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

    def __getitem__(self, index: int) -> TrainSample:
        image = self.images[index]
        rng = sample_rng(self.seed, self.epoch, index)
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
            raw = read_mask(record.mask_path)
            if raw.shape[:2] != read_size(record.path):
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


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file without decoding its pixels."""
    with Image.open(path) as img:
        return img.size[1], img.size[0]


# Imported last: layouts.py builds on the names above and registers its layouts in LAYOUTS.
from . import layouts as _layouts  # noqa: E402
