"""What the evaluation attacks attack: any differentiable anomaly detector.

A *detector* maps images (B, 3, H, W) in [0, 1] to image scores (B,) and anomaly maps (B, H, W)
(higher = more anomalous), differentiably in the images. Optionally it also gives patch logits
(B, N) on a square grid of ``patch_size`` pixel patches: the paper's ``mask`` objective needs
them, ``score`` and ``map`` do not. Two kinds of objects are accepted (:func:`as_detector`):

- a PatchGuard-like model: an ``nn.Module`` whose ``forward(images, with_attention=False)``
  returns an object with ``.logits`` (B, N) and that offers ``image_score(logits)`` and
  ``anomaly_map(logits)``; scores, maps and patch logits all come from one forward pass;
- any callable ``images -> (scores, maps)`` or ``-> DetectorOutput`` (e.g. an adapter around
  another library's model). Give ``patch_size`` when it returns patch logits, and ``module``
  when it closes over an ``nn.Module``, so that scoring runs in eval mode and the attacks can
  freeze its parameters while they take input gradients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

Lazy = torch.Tensor | Callable[[], torch.Tensor]


class DetectorOutput:
    """One detector pass: ``scores`` (B,), ``maps`` (B, H, W), ``patch_logits`` (B, N) or None.

    ``scores`` and ``maps`` may be given as functions of no arguments, computed when first
    read: an objective that needs only the scores then never pays for the maps.
    """

    __slots__ = ("_scores", "_maps", "patch_logits")

    def __init__(self, scores: Lazy, maps: Lazy, patch_logits: torch.Tensor | None = None
                 ) -> None:
        self._scores, self._maps, self.patch_logits = scores, maps, patch_logits

    @property
    def scores(self) -> torch.Tensor:
        """Image scores (B,); higher = more anomalous."""
        if callable(self._scores):
            self._scores = self._scores()
        return self._scores

    @property
    def maps(self) -> torch.Tensor:
        """Anomaly maps (B, H, W); higher = more anomalous."""
        if callable(self._maps):
            self._maps = self._maps()
        return self._maps


class DifferentiableDetector(Protocol):
    """A differentiable detector: images in [0, 1] -> (scores, maps) or a DetectorOutput."""

    def __call__(self, images: torch.Tensor) -> DetectorOutput | tuple[torch.Tensor, ...]:
        """Score a batch of images (B, 3, H, W) in [0, 1]."""
        ...


class AttackableDetector(nn.Module):
    """A detector in the form the attacks use: ``detector(images) -> DetectorOutput``.

    An ``nn.Module`` so that the wrapped model's modules and parameters are reachable:
    :func:`eval_mode` and the attacks' parameter freezing go through it.
    """

    patch_size: int | None = None  # pixels per patch side when the detector has patch logits

    @property
    def has_patch_logits(self) -> bool:
        """Whether the outputs carry patch logits (what the ``mask`` objective needs)."""
        return self.patch_size is not None

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H, W) in eval mode, without gradients."""
        with eval_mode(self):
            output = self(images)
            return output.scores, output.maps


class PatchLogitDetector(AttackableDetector):
    """A PatchGuard-like model as a detector: one forward pass gives logits, scores and maps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.patch_size = getattr(model, "patch_size", None)

    @property
    def has_patch_logits(self) -> bool:
        """Always: the model's output is patch logits (its patch size may be unknown)."""
        return True

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """Patch logits from one forward pass without attention; scores and maps on demand."""
        logits = self.model(images, with_attention=False).logits.float()
        return DetectorOutput(lambda: self.model.image_score(logits),
                              lambda: self.model.anomaly_map(logits), logits)


class CallableDetector(AttackableDetector):
    """Any callable ``images -> (scores, maps[, patch_logits])`` or ``-> DetectorOutput``."""

    def __init__(self, function: Callable[[torch.Tensor], Any], patch_size: int | None = None,
                 module: nn.Module | None = None) -> None:
        super().__init__()
        self.function = function
        self.patch_size = patch_size
        # Register the model behind the callable (given, the callable itself, or the object of a
        # bound method) so that eval mode and parameter freezing reach it.
        owner = getattr(function, "__self__", None)
        self.module = next((m for m in (module, function, owner) if isinstance(m, nn.Module)),
                           None)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """Call the detector and check the shapes of what it returns."""
        output = self.function(images)
        if isinstance(output, DetectorOutput):
            scores, maps, logits = output.scores, output.maps, output.patch_logits
        elif isinstance(output, (tuple, list)) and len(output) in (2, 3):
            scores, maps, logits = (*output, None)[:3]
        else:
            raise TypeError("a detector must return (scores, maps), (scores, maps, patch "
                            f"logits) or a DetectorOutput, got {type(output).__name__}")
        batch = images.shape[0]
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (batch,):
            raise ValueError(f"detector scores must have shape ({batch},) for {batch} images, "
                             f"got {_shape(scores)}")
        if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != batch:
            raise ValueError(f"detector maps must have shape ({batch}, H, W), got {_shape(maps)}")
        if logits is not None and self.patch_size is None:
            raise ValueError("the detector returns patch logits: give its patch_size")
        return DetectorOutput(scores.float(), maps.float(),
                              None if logits is None else logits.float())


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def is_patch_logit_model(obj: Any) -> bool:
    """Whether ``obj`` follows PatchGuard's protocol: ``forward(images, with_attention=...)``."""
    if not isinstance(obj, nn.Module):
        return False
    try:
        return "with_attention" in inspect.signature(obj.forward).parameters
    except (TypeError, ValueError):
        return False


def as_detector(obj: Any, patch_size: int | None = None,
                module: nn.Module | None = None) -> AttackableDetector:
    """``obj`` as an :class:`AttackableDetector` (returned as it is when it already is one).

    A PatchGuard-like model (see :func:`is_patch_logit_model`) is wrapped in
    :class:`PatchLogitDetector`; any other callable in :class:`CallableDetector` with
    ``patch_size`` and ``module`` (see the module docstring).
    """
    if isinstance(obj, AttackableDetector):
        return obj
    if is_patch_logit_model(obj):
        return PatchLogitDetector(obj)
    if not callable(obj):
        raise TypeError(f"a detector must be callable (images -> scores, maps), got "
                        f"{type(obj).__name__}")
    return CallableDetector(obj, patch_size, module)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode, restoring each one's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    if not any(flag for _, flag in flags):
        yield  # already in eval mode (every evaluation pass): nothing to switch or restore
        return
    model.eval()
    try:
        yield
    finally:
        # Each module's own flag, set directly: ``module.train(flag)`` would recurse into its
        # children every time (7 ms per call on a ViT-S detector, 4 % of a batch-8 pass).
        for module, flag in flags:
            module.training = flag
