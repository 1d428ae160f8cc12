"""A baseline of one class, trained once and kept in the run folder, ready to be attacked.

:func:`prepare_baseline` is what ``patchguard benchmark --baselines`` needs per class and
baseline: it trains the baseline with anomalib's code on the class's training records (or reads
back the checkpoint an earlier, interrupted sweep wrote) and loads the class's test set exactly
as PatchGuard's evaluation does (same records, same size, same resizing), so that every method
is attacked on the same images. Its ``detector`` and ``test_set`` are what the evaluation of any
detector takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datasets import TestDataset, load_test_set
from .anomalib import AnomalibDetector, BaselineSettings, get_baseline
from .fit import load_baseline, save_baseline, train_baseline


@dataclass
class BaselineUnderTest:
    """A trained baseline and the test set to attack it on."""

    detector: AnomalibDetector
    test_set: TestDataset
    checkpoint: Path
    trained_now: bool  # False: read back from an earlier run's checkpoint

    @property
    def fields(self) -> dict[str, Any]:
        """What a result row of this baseline records besides its metrics."""
        settings = self.detector.settings
        baseline = get_baseline(settings.name)
        return {"method": baseline.label, "baseline": settings.name,
                "backbone": settings.backbone or baseline.default_backbone or "PDN",
                "pretrained": settings.pretrained, "model_image_size": settings.image_size,
                "checkpoint": str(self.checkpoint)}


def baseline_checkpoint(run_dir: str | Path, class_name: str, name: str) -> Path:
    """Where a class's baseline is kept: ``<run_dir>/<class>/baselines/<name>.pt``."""
    return Path(run_dir) / class_name / "baselines" / f"{name}.pt"


def default_model_size(name: str, test_image_size: int) -> int:
    """The model input size: the test size, raised to the baseline's minimum (EfficientAd 256)."""
    return max(test_image_size, get_baseline(name).min_image_size)


def prepare_baseline(
    name: str,
    dataset: str,
    dataset_dir: str | Path,
    class_name: str,
    run_dir: str | Path,
    *,
    test_image_size: int,
    image_size: int | None = None,
    device: str = "cpu",
    **train_options: Any,
) -> BaselineUnderTest:
    """Train (or read back) baseline ``name`` on one class; with the class's test set.

    ``test_image_size`` is PatchGuard's evaluation size: the test images are loaded at it and
    the detector resizes them to its own ``image_size`` (default :func:`default_model_size`).
    ``train_options`` go to :func:`train_baseline` (backbone, pretrained, seed, max_steps, ...).
    A checkpoint that exists is used only when it was trained with the same settings; otherwise
    a ValueError says so (delete it to retrain).
    """
    from ..data.layouts import load_records, resolve_class_dir

    image_size = image_size or default_model_size(name, test_image_size)
    path = baseline_checkpoint(run_dir, class_name, name)
    class_dir = resolve_class_dir(dataset_dir, class_name)
    test_set = load_test_set(dataset, dataset_dir, class_name, test_image_size)
    if path.exists():
        detector, _ = load_baseline(path, device)
        wanted = _requested_settings(name, image_size, train_options)
        if _comparable(detector.settings) != _comparable(wanted):
            raise ValueError(f"{path} was trained with {detector.settings}, not {wanted}; "
                             "delete it to retrain")
        return BaselineUnderTest(detector, test_set, path, trained_now=False)
    records = load_records(dataset, dataset_dir, class_name, "train")
    detector = train_baseline(name, class_dir, records=records, image_size=image_size,
                              device=device, **train_options)
    save_baseline(detector, path, dataset=dataset, class_name=class_name)
    return BaselineUnderTest(detector, test_set, path, trained_now=True)


_TRAIN_FIELDS = ("backbone", "layers", "pretrained", "seed", "max_steps", "holdout")


def _requested_settings(name: str, image_size: int, options: dict[str, Any]) -> BaselineSettings:
    known = {k: options[k] for k in _TRAIN_FIELDS if k in options}
    if known.get("layers") is not None:
        known["layers"] = tuple(known["layers"])
    rest = {k: v for k, v in options.items() if k not in _TRAIN_FIELDS
            and k not in ("work_dir", "imagenet_dir", "progress")}
    return BaselineSettings(name=name, image_size=image_size, options=rest, **known)


def _comparable(settings: BaselineSettings) -> dict[str, Any]:
    return settings.to_dict()
