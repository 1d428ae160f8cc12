"""Robust backbone fine-tuning without labels (FARE-style, Schlarmann et al. 2024).

A copy of the backbone is fine-tuned so that its patch features of ``x + delta`` stay close to
the frozen original's features of ``x``, ``delta`` the worst L-infinity perturbation of that
distance (PGD), plus a weighted clean term ``||f_ft(x) - f_orig(x)||^2`` that keeps the features
the detector was designed for. Only the layers the detector reads count. It needs neither labels
nor anomalies: the class's own training images and any folders of unlabelled images (more
images, better robust generalisation). The result is a backbone file in timm's key layout that
``patchguard train --backbone-weights FILE`` takes, with a JSON card beside it that records the
feature stability it buys: the relative feature shift ``||f(x + delta*) - f(x)|| / ||f(x)||``
under the worst perturbation (PGD on that shift), before and after, on images not fine-tuned on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import DEFAULT_BACKBONE, TrainConfig
from ..data.images import is_image_file, read_image, resize_image
from ..data.layouts import load_records
from ..models.backbone import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, create_backbone
from ..utils.checks import InputError
from ..utils.files import atomic_write_bytes, atomic_write_text
from ..version import __version__

logger = logging.getLogger(__name__)

# The folder name that stands for scikit-image's bundled photographs (the demo extra installs
# it); the three the demo's textures are cut from are left out, so that no demo test region is
# ever fine-tuned on.
SKIMAGE_PHOTOS = "skimage"
_SKIMAGE_NAMES = ("astronaut", "camera", "cat", "cell", "clock", "coffee", "coins",
                  "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page",
                  "retina", "rocket", "text")


@dataclass
class RobustifySettings:
    """What :func:`robustify` fine-tunes and how (epsilons in 1/255 units)."""

    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None  # None: the pretrained weights patchguard resolves
    pretrained: bool = True
    image_size: int = 112
    feature_layers: list[int] = field(default_factory=lambda: [6])
    epsilon: float = 4.0
    steps: int = 3
    clean_weight: float = 1.0
    epochs: int = 8
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-4
    holdout: int = 8  # class images kept out of fine-tuning, for the stability figures
    eval_epsilons: list[float] = field(default_factory=lambda: [2.0, 8.0])
    eval_steps: int = 10
    seed: int = 0

    def check(self) -> None:
        """Refuse values outside their domain (InputError naming the setting)."""
        for name in ("epsilon", "clean_weight", "lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(name, value, "must be a finite number >= 0")
        if not 0 < self.epsilon <= 255:
            raise InputError("epsilon (--epsilon)", self.epsilon, "must be in (0, 255] (1/255 "
                             "units)", "e.g. --epsilon 4 for 4/255")
        for name in ("steps", "epochs", "batch_size", "eval_steps", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(name, getattr(self, name), "must be an integer >= 1")
        if not isinstance(self.holdout, int) or self.holdout < 0:
            raise InputError("holdout (--holdout)", self.holdout, "must be an integer >= 0")


class FeatureModel(nn.Module):
    """Images in [0, 1] to the concatenated patch features (B, N, D) of the chosen layers."""

    def __init__(self, backbone: nn.Module, feature_layers: Sequence[int]) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, feature_layers, [])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def vit(self) -> nn.Module:
        """The timm ViT whose weights are fine-tuned and saved."""
        return self.extractor.pretrained_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (B, N, D) of images (B, 3, H, W) in [0, 1]."""
        return self.extractor((images - self.mean) / self.std, with_attention=False)[0]


def feature_model(settings: RobustifySettings) -> tuple[FeatureModel, str]:
    """The backbone of ``settings`` with its pretrained weights; returns it and their source."""
    vit = create_backbone(settings.backbone, settings.image_size)
    source = "random initialisation (--no-pretrained)"
    if settings.pretrained or settings.backbone_weights:
        from ..models.backbone_weights import load_backbone_weights

        source = load_backbone_weights(vit, settings.backbone, settings.backbone_weights)
    return FeatureModel(vit, settings.feature_layers), source


def feature_attack(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                   epsilon: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """L-infinity PGD (random start, step 2.5 eps / steps) maximising
    ``||model(images + delta) - target||^2``; returns the attacked images (no gradient).

    ``epsilon`` is in [0, 1] pixel units. Only input gradients are taken, so the model's
    parameters accumulate nothing.
    """
    delta = (torch.rand(images.shape, generator=generator) * 2 - 1).to(images) * epsilon
    delta = (images + delta).clamp(0, 1) - images
    step = 2.5 * epsilon / steps
    for _ in range(steps):
        attacked = (images + delta).requires_grad_(True)
        loss = (model(attacked) - target).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, attacked)
        delta = (delta + step * grad.sign()).clamp(-epsilon, epsilon)
        delta = (images + delta).clamp(0, 1) - images
    return (images + delta).detach()


def feature_stability(model: nn.Module, images: torch.Tensor, epsilons: Sequence[float],
                      steps: int = 10, batch_size: int = 16, seed: int = 0
                      ) -> dict[str, float]:
    """Mean over images of ``||f(x + delta*) - f(x)|| / ||f(x)||`` (features of every patch
    and layer as one vector), ``delta*`` from PGD on that shift; keyed by epsilon (1/255)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    result = {}
    try:
        for eps in epsilons:
            shifts = []
            for batch in images.split(batch_size):
                with torch.no_grad():
                    clean = model(batch)
                attacked = feature_attack(model, batch, clean, eps / 255.0, steps, generator)
                with torch.no_grad():
                    moved = model(attacked)
                shifts.append((moved - clean).flatten(1).norm(dim=1)
                              / clean.flatten(1).norm(dim=1).clamp_min(1e-12))
            result[f"{eps:g}"] = round(float(torch.cat(shifts).mean()), 4)
    finally:
        model.train(was_training)
    return result


@torch.no_grad()
def feature_drift(model: nn.Module, original: nn.Module, images: torch.Tensor,
                  batch_size: int = 16) -> float:
    """Mean over images of ``||f_ft(x) - f_orig(x)|| / ||f_orig(x)||``: how far fine-tuning moved
    the clean features (what the detector was built on)."""
    drifts = []
    for batch in images.split(batch_size):
        reference = original(batch)
        drifts.append((model(batch) - reference).flatten(1).norm(dim=1)
                      / reference.flatten(1).norm(dim=1).clamp_min(1e-12))
    return round(float(torch.cat(drifts).mean()), 4) if drifts else float("nan")


def _folder_images(folder: str) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError("extra image folder (--images)", folder, "is not a folder",
                         f"give a folder of unlabelled images, or '{SKIMAGE_PHOTOS}' for "
                         "scikit-image's photographs")
    found = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not found:
        raise InputError("extra image folder (--images)", folder, "holds no image files",
                         "give a folder with .png / .jpg images (searched recursively)")
    return found


def skimage_photographs() -> list[np.ndarray]:
    """scikit-image's bundled photographs as RGB uint8 arrays (the demo textures' sources
    excluded)."""
    try:
        import skimage.data
    except ImportError:
        raise InputError("extra image folder (--images)", SKIMAGE_PHOTOS,
                         "needs scikit-image", 'pip install "patchguard[demo]"') from None
    photos = []
    for name in _SKIMAGE_NAMES:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.dtype != np.uint8:
            photo = (photo.astype(np.float64) / max(float(photo.max()), 1.0) * 255).astype(
                np.uint8)
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[..., :3]))
    return photos


def _square(image: np.ndarray, side: int) -> np.ndarray:
    """The centre square of an image, resized to side x side."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(image[top:top + s, left:left + s])
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.LANCZOS))


@dataclass
class ImagePool:
    """The images of one fine-tuning run: the class's (image_size, fine-tuned and held out) and
    the extra folders' (twice image_size, cropped at random each step)."""

    train: torch.Tensor  # (n, 3, S, S) uint8
    held_out: torch.Tensor  # (h, 3, S, S) uint8
    extra: torch.Tensor  # (m, 3, 2S, 2S) uint8
    sources: dict[str, Any]

    def digest(self) -> str:
        """A hash of every pixel, for the cache key and the card."""
        h = hashlib.sha256()
        for tensor in (self.train, self.held_out, self.extra):
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()[:16]


def _to_uint8_tensor(images: list[np.ndarray], side: int) -> torch.Tensor:
    if not images:
        return torch.zeros(0, 3, side, side, dtype=torch.uint8)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def image_pool(dataset: str, dataset_dir: str, class_name: str, extra: Sequence[str],
               image_size: int, holdout: int, seed: int) -> ImagePool:
    """Load the class's training images (``holdout`` of them kept aside, fixed by seed) and the
    images of the ``extra`` folders (``skimage``: scikit-image's photographs)."""
    class_images: list[np.ndarray] = []
    if dataset_dir:
        records = load_records(dataset, dataset_dir, class_name, "train")
        class_images = [resize_image(read_image(r.path), image_size) for r in records]
    order = np.random.default_rng(seed).permutation(len(class_images))
    held = set(order[:min(holdout, max(len(class_images) - 1, 0))].tolist())
    train = [im for i, im in enumerate(class_images) if i not in held]
    held_out = [im for i, im in enumerate(class_images) if i in held]
    big = 2 * image_size
    extra_images: list[np.ndarray] = []
    counts = {}
    for folder in extra:
        if folder == SKIMAGE_PHOTOS:
            found = [_square(p, big) for p in skimage_photographs()]
        else:
            found = [_square(read_image(p), big) for p in _folder_images(folder)]
        counts[folder] = len(found)
        extra_images.extend(found)
    if not train and not extra_images:
        raise InputError("images", f"{dataset_dir or '-'} / {list(extra)}", "holds no image to "
                         "fine-tune on", "give --dataset-dir and --class-name, or --images "
                         "FOLDER")
    sources = {"dataset": dataset, "dataset_dir": str(dataset_dir), "class_name": class_name,
               "class_images": len(train), "held_out_images": len(held_out),
               "extra_folders": counts}
    return ImagePool(_to_uint8_tensor(train, image_size), _to_uint8_tensor(held_out, image_size),
                     _to_uint8_tensor(extra_images, big), sources)


def _batch(pool: ImagePool, indices: torch.Tensor, size: int, generator: torch.Generator
           ) -> torch.Tensor:
    """Images of the pool's combined index space (class images first), as floats in [0, 1]:
    extra images cropped at random to ``size``, every image flipped at random."""
    n = pool.train.shape[0]
    images = []
    for index in indices.tolist():
        if index < n:
            image = pool.train[index]
        else:
            source = pool.extra[index - n]
            top, left = torch.randint(source.shape[-1] - size + 1, (2,), generator=generator)
            image = source[:, top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        images.append(image)
    return torch.stack(images).float() / 255.0


@dataclass
class RobustifyResult:
    """Where the fine-tuned backbone went and its card."""

    path: Path
    card_path: Path
    card: dict[str, Any]


def card_path_for(path: str | Path) -> Path:
    """The card's path beside a backbone file: ``NAME.safetensors`` -> ``NAME.json``."""
    return Path(path).with_suffix(".json")


def robustify(
    output: str | Path,
    settings: RobustifySettings | None = None,
    *,
    dataset: str = "mvtec",
    dataset_dir: str | Path = "",
    class_name: str = "",
    extra_images: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    pool: ImagePool | None = None,
) -> RobustifyResult:
    """Fine-tune the backbone's features to be robust (see the module docstring); write the
    backbone (safetensors, timm keys) to ``output`` and its card beside it.

    Images: the training split of ``class_name`` in ``dataset_dir`` (``settings.holdout`` of
    them held out for the stability figures) and every image under ``extra_images`` folders
    (``"skimage"``: scikit-image's photographs). An existing ``output`` is refused unless
    ``overwrite``. Ctrl-C writes the steps done so far (the card says ``"complete": false``)
    and raises KeyboardInterrupt. Deterministic under ``settings.seed`` on one thread.
    """
    from tqdm.auto import tqdm

    settings = settings or RobustifySettings()
    settings.check()
    output = Path(output).expanduser()
    if output.suffix.lower() != ".safetensors":
        raise InputError("output (--output)", str(output), "must end in .safetensors",
                         f"e.g. {output.with_suffix('.safetensors')}")
    card_path = card_path_for(output)
    for path in (output, card_path):
        if path.exists() and not overwrite:
            raise InputError("output (--output)", str(path), "already exists",
                             "give another file, or --overwrite to replace it")
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    if pool is None:
        pool = image_pool(dataset, str(dataset_dir), class_name, extra_images,
                          settings.image_size, settings.holdout, settings.seed)
    model, source = feature_model(settings)
    model.to(device).eval()  # a ViT has no batch statistics; eval keeps drop-path off
    original = FeatureModel(create_backbone(settings.backbone, settings.image_size),
                            settings.feature_layers)
    original.vit.load_state_dict(model.vit.state_dict())
    original.to(device).eval().requires_grad_(False)
    depth = model.extractor.depth
    trainable = [p for name, p in model.vit.named_parameters()
                 if not name.startswith("blocks.") or int(name.split(".")[1]) < depth]
    for p in model.vit.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    held = (pool.held_out.float() / 255.0).to(device)
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    before = (feature_stability(model, held, settings.eval_epsilons, settings.eval_steps,
                                seed=settings.seed) if len(held) else {})
    measure_cpu = time.process_time() - cpu_started
    count = pool.train.shape[0] + pool.extra.shape[0]
    steps_per_epoch = math.ceil(count / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    eps = settings.epsilon / 255.0
    done, losses, interrupted = 0, [], False
    train_cpu_started = time.process_time()
    bar = tqdm(total=total, disable=not progress, desc="robustify", unit="step")
    try:
        for _ in range(settings.epochs):
            order = torch.randperm(count, generator=generator)
            for indices in order.split(settings.batch_size):
                images = _batch(pool, indices, settings.image_size, generator).to(device)
                with torch.no_grad():
                    target = original(images)
                attacked = feature_attack(model, images, target, eps, settings.steps, generator)
                features = model(torch.cat([attacked, images]))
                adv_part, clean_part = features.split(images.shape[0])
                adv_loss = (adv_part - target).pow(2).sum(-1).mean()
                clean_loss = (clean_part - target).pow(2).sum(-1).mean()
                loss = adv_loss + settings.clean_weight * clean_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                done += 1
                losses.append((float(adv_loss.detach()), float(clean_loss.detach())))
                bar.update(1)
                bar.set_postfix(adv=f"{losses[-1][0]:.2f}", clean=f"{losses[-1][1]:.2f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    train_cpu = time.process_time() - train_cpu_started
    after, drift = {}, None
    if not interrupted and len(held):
        cpu = time.process_time()
        after = feature_stability(model, held, settings.eval_epsilons, settings.eval_steps,
                                  seed=settings.seed)
        drift = feature_drift(model, original, held)
        measure_cpu += time.process_time() - cpu
    tail = losses[-max(1, steps_per_epoch):]
    card = {
        "kind": "patchguard robust backbone (unlabelled FARE-style fine-tuning)",
        "patchguard_version": __version__,
        "complete": not interrupted,
        "settings": dataclasses.asdict(settings),
        "initial_weights": source,
        "images": {**pool.sources, "digest": pool.digest()},
        "optimizer_steps": done,
        "optimizer_steps_planned": total,
        "final_losses": {"adversarial": round(float(np.mean([a for a, _ in tail])), 4)
                         if tail else None,
                         "clean": round(float(np.mean([c for _, c in tail])), 4)
                         if tail else None},
        "cpu_seconds": round(train_cpu, 1),
        "measure_cpu_seconds": round(measure_cpu, 1),
        "wall_seconds": round(time.perf_counter() - wall_started, 1),
        "feature_stability": {
            "what": "mean relative feature shift ||f(x+d)-f(x)|| / ||f(x)|| under PGD-"
                    f"{settings.eval_steps} on that shift, on the {len(held)} held-out class "
                    "images (lower is more stable)",
            "before": before, "after": after,
            "clean_drift": drift,
            "clean_drift_what": "mean ||f_ft(x)-f_orig(x)|| / ||f_orig(x)|| on the same images"},
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in model.vit.state_dict().items()}
    from safetensors.torch import save as save_tensors

    blob = save_tensors(tensors, metadata={"patchguard_card": json.dumps(card)})
    # A cache, not an output a user names: kept out of the folder's manifest.
    atomic_write_bytes(output, lambda handle: handle.write(blob), own=False)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n", own=False)
    if interrupted:
        raise KeyboardInterrupt(f"robustify interrupted after {done} of {total} steps; "
                                f"{output} holds them (its card says complete: false)")
    logger.info("robust backbone written to %s (%d steps, %.1f CPU minutes); feature shift "
                "before %s, after %s", output, done, train_cpu / 60, before, after)
    return RobustifyResult(output, card_path, card)


def settings_from_config(config: TrainConfig) -> RobustifySettings:
    """The fine-tuning settings a training config's robustify_* keys ask for."""
    return RobustifySettings(
        backbone=config.backbone, backbone_weights=config.backbone_weights,
        pretrained=config.pretrained, image_size=config.image_size,
        feature_layers=list(config.feature_layers), epsilon=config.robustify_epsilon,
        steps=config.robustify_steps, epochs=config.robustify_epochs, seed=config.seed)


def cache_folder() -> Path:
    """Where preset runs keep their fine-tuned backbones ($PATCHGUARD_CACHE or
    ~/.cache/patchguard, then robust_backbones)."""
    from ..models.backbone_weights import default_cache_dir

    return default_cache_dir() / "robust_backbones"


def robust_backbone_for(config: TrainConfig, progress: bool = True) -> TrainConfig:
    """The config with its backbone fine-tuned first when it asks for it.

    Nothing changes unless ``robustify_epsilon`` > 0 and adversarial training is on (its
    ``--no-adv-train`` twin has neither). The backbone is cached under :func:`cache_folder`,
    keyed by a hash of the settings and of every pixel of the images, and reused by later runs.
    """
    if config.robustify_epsilon <= 0 or not config.adv_train:
        return config
    settings = settings_from_config(config)
    pool = image_pool(config.dataset, config.dataset_dir, config.class_name,
                      config.robustify_images, settings.image_size, settings.holdout,
                      settings.seed)
    key = hashlib.sha256(json.dumps(
        {"settings": dataclasses.asdict(settings), "images": pool.digest(),
         "weights": _weights_id(settings.backbone_weights)},
        sort_keys=True).encode()).hexdigest()[:16]
    path = cache_folder() / f"{config.class_name or 'images'}-{key}.safetensors"
    card = card_path_for(path)
    cached = False
    if path.is_file() and card.is_file():
        try:
            cached = json.loads(card.read_text()).get("complete") is True
        except (OSError, json.JSONDecodeError):
            cached = False
    if cached:
        logger.info("robust backbone from the cache: %s", path)
    else:
        logger.info("fine-tuning a robust backbone first (epsilon %g/255, %d epochs; cached "
                    "as %s)", settings.epsilon, settings.epochs, path)
        robustify(path, settings, overwrite=True, progress=progress, pool=pool,
                  device=_device(config.device))
    # pretrained: the file is now the weights to load (from random ones too, --no-pretrained)
    return dataclasses.replace(config, backbone_weights=str(path), pretrained=True)


def _weights_id(path: str | None) -> Any:
    if not path:
        return None
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _device(name: str) -> torch.device:
    from ..utils.device import resolve_device

    return resolve_device(name)
