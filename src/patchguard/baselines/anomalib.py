"""anomalib's PatchCore, PaDiM and EfficientAd as differentiable detectors: adapters, registry.

A *detector* is a callable ``images (B, 3, H, W) in [0, 1] -> (scores (B,), maps (B, H, W))``,
differentiable in the images, which patchguard's attacks can attack like its own model.

anomalib (2.7) computes parts of these models' forwards under ``torch.no_grad()``: the
backbone in ``TimmFeatureExtractor.forward`` and in ``PatchcoreModel.forward``, backbone and
embedding in ``PadimModel.forward``, EfficientAd's teacher
(``compute_student_teacher_distance``) and its autoencoder and both map means
(``compute_maps``). Called as they are, the scores have no graph and a gradient attack silently
does nothing. Each adapter below therefore calls the same anomalib sub-modules and methods in
the same order, outside ``no_grad``; the tests check on clean images that the result equals
anomalib's own forward, so that an anomalib release that changes a forward fails loudly.

Scores are the raw model outputs, before anomalib's ``PostProcessor``: it maps them through a
clamp to [0, 1], monotone (the AUROC does not change) but with a zero gradient for every
confidently classified image.

anomalib is imported lazily: ``import patchguard.baselines`` works without it, and every entry
point that needs it raises an ImportError naming the extra (``pip install
'patchguard[anomalib]'``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .registry import BASELINES

logger = logging.getLogger(__name__)

ANOMALIB_HINT = "pip install 'patchguard[anomalib]'"
MIN_ANOMALIB = (2, 7)

Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def require_anomalib() -> Any:
    """The anomalib module, or an ImportError that names the extra to install."""
    try:
        import anomalib
    except ImportError as error:
        raise ImportError(
            f"the anomalib baselines need anomalib >= {'.'.join(map(str, MIN_ANOMALIB))}, which "
            f"is not installed ({error}); install the extra: {ANOMALIB_HINT}"
        ) from error
    version = tuple(int(p) for p in anomalib.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_ANOMALIB:
        raise ImportError(f"anomalib {anomalib.__version__} is too old for the baselines; "
                          f"install the extra: {ANOMALIB_HINT}")
    return anomalib


# --------------------------------------------------------------------------- forwards


def _backbone_features(extractor: nn.Module, x: torch.Tensor) -> dict:
    """``TimmFeatureExtractor(x)`` with the graph kept (it skips its no_grad when asked to)."""
    saved = extractor.requires_grad
    extractor.requires_grad = True  # only selects the branch without no_grad (timm.py)
    extractor.feature_extractor.eval()  # what the no_grad branch does too
    try:
        return extractor(x)
    finally:
        extractor.requires_grad = saved


def patchcore_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``PatchcoreModel.forward`` (inference branch, no tiler) with the graph kept."""
    x = x.type(model.memory_bank.dtype)
    features = _backbone_features(model.feature_extractor, x)
    features = {layer: model.feature_pooler(f) for layer, f in features.items()}
    embedding = model.generate_embedding(features)
    batch, _, height, width = embedding.shape
    embedding = model.reshape_embedding(embedding)
    patch_scores, locations = model.nearest_neighbors(embedding=embedding, n_neighbors=1)
    patch_scores = patch_scores.reshape(batch, -1)
    locations = locations.reshape(batch, -1)
    scores = model.compute_anomaly_score(patch_scores, locations, embedding)
    maps = model.anomaly_map_generator(patch_scores.reshape(batch, 1, height, width),
                                       x.shape[-2:])
    return scores, maps


def padim_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``PadimModel.forward`` (inference branch, no tiler) with the graph kept."""
    features = _backbone_features(model.feature_extractor, x)
    embedding = model.generate_embedding(features)
    maps = model.anomaly_map_generator(embedding=embedding, mean=model.gaussian.mean,
                                       inv_covariance=model.gaussian.inv_covariance,
                                       image_size=x.shape[-2:])
    return torch.amax(maps, dim=(-2, -1)), maps


def efficient_ad_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``EfficientAdModel.forward`` (inference, normalised maps), gradient through all 3 nets.

    ``compute_maps`` takes the map means under no_grad, so its lines are written out here, in
    anomalib's order and with its quantile normalisation.
    """
    channels = model.teacher_out_channels
    size = x.shape[-2:]
    teacher = model._normalize_teacher(model.teacher(x))
    student = model.student(x)
    autoencoder = model.ae(x, size)
    map_st = torch.mean((teacher - student[:, :channels]) ** 2, dim=1, keepdim=True)
    map_stae = torch.mean((autoencoder - student[:, channels:]) ** 2, dim=1, keepdim=True)
    if model.pad_maps:
        map_st = F.pad(map_st, (4, 4, 4, 4))
        map_stae = F.pad(map_stae, (4, 4, 4, 4))
    map_st = F.interpolate(map_st, size=size, mode="bilinear")
    map_stae = F.interpolate(map_stae, size=size, mode="bilinear")
    is_set = model._is_set_tensor(model.quantiles)
    q = model.quantiles
    range_st = torch.where(is_set, q["qb_st"] - q["qa_st"], torch.ones_like(q["qa_st"]))
    range_ae = torch.where(is_set, q["qb_ae"] - q["qa_ae"], torch.ones_like(q["qa_ae"]))
    map_st = torch.where(is_set, 0.1 * (map_st - q["qa_st"]) / range_st, map_st)
    map_stae = torch.where(is_set, 0.1 * (map_stae - q["qa_ae"]) / range_ae, map_stae)
    maps = 0.5 * map_st + 0.5 * map_stae
    return torch.amax(maps, dim=(-2, -1)), maps


# --------------------------------------------------------------------------- settings, builders


@dataclass(frozen=True)
class BaselineSettings:
    """How one baseline is built and trained; stored in its checkpoint."""

    name: str
    image_size: int = 224  # the model's input size (the detector resizes its input to it)
    backbone: str | None = None  # None: the baseline's default (anomalib's)
    layers: tuple[str, ...] | None = None  # None: the baseline's default for the backbone
    pretrained: bool = True  # False: random initialisation (offline)
    seed: int = 0
    max_steps: int | None = None  # EfficientAd's training steps (None: 70 000, the paper's)
    holdout: float = 0.1  # EfficientAd: share of normal training images kept for its quantiles
    options: dict[str, Any] = field(default_factory=dict)  # passed to the anomalib model

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        values = asdict(self)
        values["layers"] = list(self.layers) if self.layers is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BaselineSettings:
        """The inverse of :meth:`to_dict`."""
        values = dict(values)
        if values.get("layers") is not None:
            values["layers"] = tuple(values["layers"])
        return cls(**values)


@dataclass(frozen=True)
class Baseline:
    """One anomalib model: how to build it, its differentiable forward, how it trains."""

    name: str
    label: str  # the method's name in tables
    model_class: str  # attribute of anomalib.models
    default_backbone: str | None
    forward: Forward
    train_batch_size: int = 8
    min_image_size: int = 32
    needs_holdout: bool = False  # validation must be held-out normal images (EfficientAd)

    def layers_for(self, backbone: str | None) -> tuple[str, ...] | None:
        """The default feature layers for ``backbone`` (None: the model has fixed networks)."""
        if backbone is None:
            return None
        if "vit" in backbone.lower():
            return ("blocks.8",)  # 2/3 of a 12-block ViT, as the prototype's DINOv2 runs
        return ("layer2", "layer3") if self.name == "patchcore" else ("layer1", "layer2", "layer3")


# The values behind the names of .registry.BASELINES.
PATCHCORE = Baseline("patchcore", "PatchCore", "Patchcore", "wide_resnet50_2", patchcore_forward)
PADIM = Baseline("padim", "PaDiM", "Padim", "resnet18", padim_forward)
EFFICIENT_AD = Baseline("efficient_ad", "EfficientAd", "EfficientAd", None,
                        efficient_ad_forward, train_batch_size=1, min_image_size=256,
                        needs_holdout=True)


def get_baseline(name: str) -> Baseline:
    """The registered baseline ``name``; ValueError listing the others."""
    return BASELINES[name]


def _is_vit(backbone: str | None) -> bool:
    return backbone is not None and "vit" in backbone.lower()


@contextlib.contextmanager
def _hub_access() -> Iterator[None]:
    """timm's hub downloads as patchguard does them: cache only, at once, when offline."""
    from ..models.backbone_weights.hub import _hub_offline_mode, _hub_offline_reason

    with _hub_offline_mode() if _hub_offline_reason() else contextlib.nullcontext():
        yield


def _natural_images(root: Path, size: int, count: int = 16, seed: int = 0) -> Path:
    """An ImageFolder of crops of scikit-image's bundled CC0 photographs (Imagenette's role).

    EfficientAd penalises the student on natural images; anomalib downloads Imagenette for
    that. Offline, these few photographs stand in (a weaker penalty; stated in docs/baselines.md).
    """
    from PIL import Image
    from skimage import data

    out = root / "photos"
    if out.is_dir() and len(list(out.glob("*.png"))) >= count:
        return root
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
              data.hubble_deep_field()]
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w, size * 1.5))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(photo[y : y + side, x : x + side])
        crop.resize((size, size), Image.BILINEAR).save(out / f"{i:03d}.png")
    return root


def build_module(settings: BaselineSettings, work_dir: Path | None = None,
                 imagenet_dir: str | Path | None = None, load_weights: bool = True) -> Any:
    """An untrained anomalib Lightning model for ``settings`` (no download unless pretrained).

    ``load_weights=False`` skips every pretrained-weight source (the weights then come from a
    baseline checkpoint).
    """
    require_anomalib()
    import anomalib.models

    baseline = get_baseline(settings.name)
    cls = getattr(anomalib.models, baseline.model_class)
    size = (settings.image_size, settings.image_size)
    common = dict(pre_processor=cls.configure_pre_processor(image_size=size), visualizer=False,
                  evaluator=False)
    backbone = settings.backbone or baseline.default_backbone
    pretrained = settings.pretrained and load_weights
    if baseline.name == "efficient_ad":
        if settings.backbone is not None:
            raise ValueError("EfficientAd has fixed networks (a PDN teacher): no backbone choice")
        if imagenet_dir is None:
            root = Path(work_dir or tempfile.mkdtemp(prefix="patchguard-efficient-ad-"))
            imagenet_dir = _natural_images(root / "natural_images", 2 * settings.image_size,
                                           seed=settings.seed)
        module = cls(imagenet_dir=imagenet_dir, **settings.options, **common)
        if not pretrained:
            # The teacher's weights are a GitHub download (prepare_pretrained_model): keep the
            # random initialisation instead.
            module.prepare_pretrained_model = lambda: None
        else:
            module.prepare_pretrained_model = _teacher_loader(module)
        return module
    layers = settings.layers or baseline.layers_for(backbone)
    kwargs = dict(backbone=backbone, layers=list(layers), **settings.options, **common)
    if baseline.name == "padim" and _is_vit(backbone):
        # PaDiM keeps a random subset of the channels; anomalib knows no default for a ViT.
        kwargs.setdefault("n_features", 100)
    if _is_vit(backbone):
        module = cls(pre_trained=False, **kwargs)
        if pretrained:
            from ..models.backbone_weights import load_backbone_weights

            vit = module.model.feature_extractor.feature_extractor
            logger.info("%s backbone %s: %s", baseline.label, backbone,
                        load_backbone_weights(vit, backbone))
        return module
    if pretrained:
        try:
            with _hub_access():
                return cls(pre_trained=True, **kwargs)
        except Exception as error:
            from ..models.backbone_weights import BackboneWeightsError

            raise BackboneWeightsError(
                f"no pretrained weights for the {baseline.label} backbone {backbone!r} "
                f"({type(error).__name__}: {error}); timm loads them from the Hugging Face Hub "
                "(cache ~/.cache/huggingface). Offline, train with pretrained=False (random "
                "initialisation) or a DINOv2 ViT backbone (vit_small_patch14_dinov2.lvd142m, "
                "offline weights with patchguard[demo])"
            ) from error
    return cls(pre_trained=False, **kwargs)


def _teacher_loader(module: Any) -> Callable[[], None]:
    """anomalib's teacher download, with an error that says what to do offline."""
    original = module.prepare_pretrained_model

    def prepare() -> None:
        try:
            original()
        except Exception as error:
            from anomalib.utils.path import get_pretrained_weights_dir

            raise OSError(
                "EfficientAd's pretrained teacher could not be loaded ("
                f"{type(error).__name__}: {error}); anomalib downloads "
                "efficientad_pretrained_weights.zip from its GitHub releases into "
                f"{get_pretrained_weights_dir()}. Offline, put the unpacked folder there or "
                "train with pretrained=False (random teacher)"
            ) from error

    return prepare


# --------------------------------------------------------------------------- the detector


class AnomalibDetector(nn.Module):
    """A trained anomalib model as a differentiable detector: ``images -> (scores, maps)``.

    Images are (B, 3, H, W) in [0, 1] of any size; they go through the model's own training-time
    pre-processing (Resize with antialiasing [+ ImageNet Normalize]); maps come back at the
    input size. Parameters are frozen (only the input needs a gradient) and the model always
    runs its inference forward (PatchCore stores embeddings and EfficientAd's decoder uses
    dropout in train mode).
    """

    def __init__(self, module: Any, settings: BaselineSettings) -> None:
        super().__init__()
        if getattr(module.model, "tiler", None) is not None:
            raise ValueError("tiled anomalib models are not supported by the adapters")
        self.settings = settings
        self.baseline = get_baseline(settings.name)
        self.model = module.model
        pre = getattr(module, "pre_processor", None)
        # pre_processor.transform is what anomalib's training loop applied (antialiased
        # Resize); pre_processor(x) would use its export variant without antialiasing.
        transform = getattr(pre, "transform", None)
        self.transform = transform if transform is not None else nn.Identity()
        self.requires_grad_(False)
        self.eval()

    @property
    def label(self) -> str:
        """The method's name in tables, e.g. ``PatchCore``."""
        return self.baseline.label

    def train(self, mode: bool = True) -> AnomalibDetector:
        """Set the flag, but keep the anomalib model in eval mode (see the class docstring)."""
        super().train(mode)
        self.model.eval()
        return self

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the anomalib model sees them (resized, normalised)."""
        return self.transform(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, H, W) at the input size, differentiable in ``images``."""
        scores, maps = self.baseline.forward(self.model, self.model_input(images))
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)
        return scores.reshape(-1).float(), maps[:, 0].float()

    @torch.no_grad()
    def anomalib_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """anomalib's own forward (``model(x)``, no graph) on the same input, at model size."""
        output = self.model(self.model_input(images))
        maps = output.anomaly_map
        return output.pred_score.reshape(-1), maps.reshape(len(images), *maps.shape[-2:])
