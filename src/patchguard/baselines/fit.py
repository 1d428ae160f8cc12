"""Training an anomalib baseline with anomalib's Engine on patchguard's records; checkpoints.

:func:`train_baseline` fits with anomalib's own code (``Engine.fit``) and returns the fitted model
as an :class:`~patchguard.baselines.anomalib.AnomalibDetector`; :func:`save_baseline` and
:func:`load_baseline` keep it in a run folder. anomalib is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.records import SampleRecord
from .anomalib import (
    AnomalibDetector,
    Baseline,
    BaselineSettings,
    build_module,
    get_baseline,
    require_anomalib,
)

CHECKPOINT_KIND = "patchguard-anomalib-baseline"

@contextlib.contextmanager
def _quiet_lightning(progress: bool = False) -> Iterator[None]:
    """Lightning's and anomalib's tips, warnings and info lines off while a baseline trains.

    Without ``progress`` anomalib's tqdm bars (coreset selection, EfficientAd's statistics)
    are off too: tqdm reads ``TQDM_DISABLE`` only when it is imported, so the class's default
    is switched for the duration instead.
    """
    import tqdm

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
             "pytorch_lightning", "anomalib")
    levels = {name: logging.getLogger(name).level for name in names}
    init = tqdm.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        if not progress:
            tqdm.tqdm.__init__ = quiet_init
        try:
            yield
        finally:
            tqdm.tqdm.__init__ = init
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@contextlib.contextmanager
def _bounded_heap() -> Iterator[None]:
    """Large blocks from mmap while a baseline fits (glibc only; elsewhere a no-op).

    PatchCore's coreset selection allocates and frees an (N, D) temporary per selected point.
    With glibc's dynamic mmap threshold those land on the heap, which then grows by about one
    temporary per iteration: 10 GB peak RSS for the 60-image demo class at 112 px instead of
    1.0 GB with a fixed 1 MiB threshold (docs/baselines.md). The threshold is then set to
    32 MiB, the dynamic threshold's ceiling, where it ends up in a torch process anyway.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        trim(0)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for one fit, and restore their global states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def split_holdout(records: Sequence[SampleRecord], fraction: float, seed: int
                  ) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(train, held out): a seeded ``fraction`` of the records, at least one, held out."""
    records = list(records)
    if len(records) < 2:
        raise ValueError("EfficientAd needs at least 2 normal training images (one is held out "
                         "for its map quantiles)")
    order = np.random.default_rng(seed).permutation(len(records))
    count = min(len(records) - 1, max(1, int(round(fraction * len(records)))))
    held = set(order[:count].tolist())
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def _accelerator(device: str | torch.device) -> str:
    kind = torch.device(device).type if str(device) != "auto" else "auto"
    return {"cuda": "gpu"}.get(kind, kind)


def train_baseline(
    name: str,
    class_dir: str | Path | None = None,
    *,
    dataset: str = "mvtec",
    records: Sequence[SampleRecord] | None = None,
    image_size: int = 224,
    backbone: str | None = None,
    layers: Sequence[str] | None = None,
    pretrained: bool = True,
    seed: int = 0,
    max_steps: int | None = None,
    device: str = "cpu",
    work_dir: str | Path | None = None,
    imagenet_dir: str | Path | None = None,
    holdout: float = 0.1,
    progress: bool = False,
    **options: Any,
) -> AnomalibDetector:
    """Train baseline ``name`` with anomalib's Engine on one class; return it as a detector.

    The training images are the ``train`` records of ``class_dir`` read by the ``dataset``
    layout (any registered layout), or ``records`` when given. Only normal images are used.
    EfficientAd holds out ``holdout`` of them for its map quantiles; PatchCore and PaDiM fit on
    all of them. ``pretrained=False`` trains from random initialisation (offline; see
    docs/baselines.md); ``options`` go to the anomalib model (e.g. ``coreset_sampling_ratio``).
    ``progress`` shows anomalib's progress bars.
    """
    require_anomalib()
    # Imported before _quiet_lightning: lightning sets its loggers' levels when imported.
    import anomalib.engine  # noqa: F401
    import anomalib.models  # noqa: F401

    baseline = get_baseline(name)
    if image_size < baseline.min_image_size:
        raise ValueError(f"{baseline.label} needs an image size of at least "
                         f"{baseline.min_image_size} px, got {image_size}")
    if records is None:
        if class_dir is None:
            raise ValueError("give class_dir (with its dataset layout) or records")
        from ..data.layouts import load_records

        class_dir = Path(class_dir)
        records = load_records(dataset, class_dir.parent, class_dir.name, "train")
    normal = [r for r in records if r.label == 0]
    if not normal:
        raise ValueError(f"no normal training images to fit {baseline.label} on")
    settings = BaselineSettings(name=name, image_size=image_size, backbone=backbone,
                                layers=tuple(layers) if layers is not None else None,
                                pretrained=pretrained, seed=seed, max_steps=max_steps,
                                holdout=holdout, options=dict(options))
    if baseline.needs_holdout:
        train, val = split_holdout(normal, holdout, seed)
    else:
        # Validation only triggers the memory-bank / Gaussian fit: one image is enough.
        train, val = normal, normal[:1]
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="patchguard-bl-"))
        work_dir = Path(work_dir)
        stack.enter_context(_quiet_lightning(progress))
        stack.enter_context(_bounded_heap())
        stack.enter_context(_seeded(seed))
        module = _fit(baseline, settings, train, val, work_dir, device, imagenet_dir)
    return AnomalibDetector(module, settings).to(device)


def _fit(baseline: Baseline, settings: BaselineSettings, train: list[SampleRecord],
         val: list[SampleRecord], work_dir: Path, device: str, imagenet_dir: str | Path | None
         ) -> Any:
    """anomalib's Engine.fit on the records; the fitted Lightning module."""
    from anomalib.engine import Engine

    from .datamodule import RecordsDataModule

    module = build_module(settings, work_dir, imagenet_dir)
    datamodule = RecordsDataModule(train, val, settings.image_size, baseline.train_batch_size,
                                   seed=settings.seed,
                                   eval_batch_size=1 if baseline.needs_holdout else 8)
    extra: dict[str, Any] = {}
    if baseline.name == "efficient_ad":
        extra = {"max_steps": settings.max_steps or 70_000, "max_epochs": -1}
    # barebones: no checkpoint callback, logger or progress bar (anomalib's Engine would write
    # versioned result folders and model.ckpt otherwise); the run saves its own checkpoint.
    engine = Engine(accelerator=_accelerator(device), devices=1, logger=False,
                    default_root_dir=str(work_dir / "anomalib"), barebones=True, **extra)
    engine.fit(model=module, datamodule=datamodule)
    if baseline.name == "efficient_ad" and not module.model.is_set(module.model.quantiles):
        # Training stopped before an epoch ended (max_steps), so validation never ran: compute
        # the quantiles with anomalib's own method, as its on_validation_start does.
        datamodule.setup("validate")
        with torch.no_grad():
            module.model.quantiles.update(module.map_norm_quantiles(datamodule.val_dataloader()))
    return module


# --------------------------------------------------------------------------- checkpoints


def save_baseline(detector: AnomalibDetector, path: str | Path, **extra: Any) -> Path:
    """Write the fitted model (memory bank, Gaussian, networks) and its settings atomically."""
    from ..utils.checkpoint import save_checkpoint

    anomalib = require_anomalib()
    state = {k: v.detach().cpu() for k, v in detector.model.state_dict().items()}
    return save_checkpoint(path, {"kind": CHECKPOINT_KIND, "model": state,
                                  "config": detector.settings.to_dict(),
                                  "anomalib_version": anomalib.__version__, **extra})


def load_baseline(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[AnomalibDetector, dict[str, Any]]:
    """A detector from :func:`save_baseline`'s file (no refit, no weight download); payload."""
    from ..utils.checkpoint import load_checkpoint

    require_anomalib()
    import anomalib.models  # noqa: F401  (before _quiet_lightning, as in train_baseline)

    payload = load_checkpoint(path)
    if payload.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not an anomalib baseline checkpoint")
    settings = BaselineSettings.from_dict(payload["config"])
    with _quiet_lightning(), tempfile.TemporaryDirectory(prefix="patchguard-bl-") as tmp:
        # EfficientAd reads its natural images only when training: any folder will do.
        module = build_module(settings, Path(tmp), imagenet_dir=tmp, load_weights=False)
    # anomalib's buffers (memory bank, Gaussian) resize themselves on load (DynamicBufferMixin).
    module.model.load_state_dict(payload["model"], strict=True)
    return AnomalibDetector(module, settings).to(device), payload
