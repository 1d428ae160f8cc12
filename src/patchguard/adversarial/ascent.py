"""The PGD loop (:func:`signed_gradient_ascent`) that the training attacks
(:mod:`.training_attacks`) and the evaluation's gradient attacks (:mod:`.gradient`) share, with
its projection and the context that freezes parameters so only input gradients are taken."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

# x -> (loss, input gradient at x)
LossAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def project_linf(x: torch.Tensor, original: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project onto the L-infinity ball of radius ``epsilon`` around ``original``, then [0, 1]."""
    return (original + (x - original).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)


def signed_gradient_ascent(
    loss_and_grad: LossAndGrad,
    original: torch.Tensor,
    start: torch.Tensor,
    epsilon: float,
    alpha: float,
    steps: int,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The PGD loop of training and evaluation alike: ``steps`` signed-gradient steps of
    ``alpha`` from ``start``, each projected back to the ``epsilon`` ball around ``original``
    and to [0, 1]; returns the last iterate.

    ``loss_and_grad(x)`` gives the loss (per image or summed) and its input gradient;
    ``observe(x, loss)`` sees each iterate with its loss before the step (best-point tracking).
    """
    x = start
    for _ in range(steps):
        loss, grad = loss_and_grad(x)
        if observe is not None:
            observe(x, loss)
        with torch.no_grad():
            x = project_linf(x + alpha * grad.sign(), original, epsilon)
    return x


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of the model's parameters inside the block, then restore it.

    Every attack needs only the input gradient. With frozen parameters autograd records no
    weight-gradient edges and keeps no activations for them (less work and memory), and the
    oneDNN linears of :mod:`patchguard.models.kernels` skip their weight-gradient GEMMs, which
    an autograd function cannot otherwise know to be unwanted. Parameters that were already
    frozen stay frozen.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
