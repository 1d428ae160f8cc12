"""L-infinity attacks on input pixels: the faithful PGD of METHOD.md section 4 and stronger ones.

``pgd_attack`` and ``mask_objective`` are the training-time attack and are kept exactly as
METHOD.md describes them. The evaluation attacks (``run_attack`` / ``ATTACKS``) take a per-image
objective (``OBJECTIVES``: ``mask``, ``score``, ``map``) so that the best point can be tracked per
image, and return the adversarial images with the per-image objective at them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

# Training-time objective: (logits, targets) -> scalar summed over the batch.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Evaluation objective: (model, logits (B, N), targets (B, N), labels (B,), masks (B, H, W) or
# None) -> per-image loss (B,) that the attacker ascends.
PerImageObjective = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor
]

# An attack's result: adversarial images (B, C, H, W) and the per-image objective (B,) at them.
AttackResult = tuple[torch.Tensor, torch.Tensor]


def _mask_difference(values: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """Per row: mean of ``values`` where ``anomalous`` is 0 minus mean where it is 1."""
    anomalous = anomalous.to(values.dtype)
    normal = 1.0 - anomalous
    normal_mean = (values * normal).sum(dim=1) / (normal.sum(dim=1) + 1e-8)
    anomalous_mean = (values * anomalous).sum(dim=1) / (anomalous.sum(dim=1) + 1e-8)
    return normal_mean - anomalous_mean


def mask_objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image: mean logit of normal patches minus mean logit of anomalous patches; summed."""
    return _mask_difference(logits, targets).sum()


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    steps: int,
    alpha: float | None = None,
    objective: Objective = mask_objective,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return PGD-perturbed images within ``epsilon`` (pixel units in [0, 1]) of ``images``.

    Faithful to the original: step size 2.5 * eps / steps, no random start, signed gradient
    ascent on the objective. Only the input gradient is computed, so the model's parameter
    gradients stay untouched. The model's train/eval mode is left as the caller set it.
    """
    if epsilon <= 0 or steps <= 0:
        return images.detach().clone()
    if alpha is None:
        alpha = 2.5 * epsilon / steps
    original = images.detach()
    adversarial = original.clone()
    device_type = images.device.type
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = model(adversarial, with_attention=False).logits
        loss = objective(logits.float(), targets)
        (grad,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            step = adversarial + alpha * grad.sign()
            adversarial = original + (step - original).clamp(-epsilon, epsilon)
            adversarial = adversarial.clamp(0.0, 1.0)
    return adversarial.detach()


# --------------------------------------------------------------------------------------------
# Per-image objectives
# --------------------------------------------------------------------------------------------


def mask_loss(
    model: nn.Module,
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """METHOD.md objective per image: mean normal-patch logit minus mean anomalous-patch logit."""
    return _mask_difference(logits, targets)


def score_loss(
    model: nn.Module,
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """Attack the decision: + top-k image score for normal images, - for anomalous ones."""
    sign = 1.0 - 2.0 * labels.to(logits.dtype)
    return sign * model.image_score(logits)


def map_loss(
    model: nn.Module,
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
) -> torch.Tensor:
    """Attack localisation: mean smoothed map over normal pixels minus over anomalous pixels.

    Anomalous pixels come from ``masks``; an image without mask (``masks`` None, or an empty
    mask while its patch targets are not empty, e.g. an anomalous image without pixel mask)
    uses its patch targets upsampled to pixels instead.
    """
    maps = model.anomaly_map(logits)
    size = maps.shape[-2:]
    grid = int(math.isqrt(targets.shape[-1]))
    from_targets = F.interpolate(
        targets.to(maps.dtype).reshape(-1, 1, grid, grid), size=size, mode="nearest"
    ).squeeze(1)
    if masks is None:
        pixels = from_targets
    else:
        pixels = (_as_pixel_masks(masks, size) > 0).to(maps.dtype)
        # Decided per image on the device (no host sync): empty mask -> fall back to targets.
        empty = pixels.flatten(1).sum(dim=1) == 0
        pixels = torch.where(empty.view(-1, 1, 1), from_targets, pixels)
    return _mask_difference(maps.flatten(1), pixels.flatten(1))


def _as_pixel_masks(masks: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Masks as (B, H, W) at the map resolution, from (B, H', W') or (B, 1, H', W')."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return masks


OBJECTIVES: dict[str, PerImageObjective] = {
    "mask": mask_loss,
    "score": score_loss,
    "map": map_loss,
}


def _resolve_objective(objective: str | PerImageObjective) -> PerImageObjective:
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[objective]


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


class _Problem:
    """One attack problem: model, clean images, objective inputs; gives losses and gradients."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        labels: torch.Tensor | None,
        epsilon: float,
        objective: str | PerImageObjective,
        masks: torch.Tensor | None,
    ) -> None:
        self.model = model
        self.original = images.detach()
        self.targets = targets.detach().to(images.device).float()
        if labels is None:  # an image with any anomalous patch is anomalous
            labels = self.targets.flatten(1).amax(dim=1)
        self.labels = torch.as_tensor(labels, device=images.device).detach().float()
        self.masks = None if masks is None else masks.detach().to(images.device)
        self.epsilon = float(epsilon)
        self.objective = _resolve_objective(objective)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` (gradients flow if ``x`` requires them)."""
        logits = self.model(x, with_attention=False).logits.float()
        return self.objective(self.model, logits, self.targets, self.labels, self.masks)

    def loss_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and its input gradient; parameter ``.grad`` is never touched."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss(x)
            # Images are independent, so the gradient of the sum is each image's own gradient.
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto the epsilon ball around the clean images, intersected with [0, 1]."""
        delta = (x - self.original).clamp(-self.epsilon, self.epsilon)
        return (self.original + delta).clamp(0.0, 1.0)

    def random_start(self, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform random point of the epsilon ball (clipped to [0, 1])."""
        device = generator.device if generator is not None else self.original.device
        noise = torch.rand(self.original.shape, generator=generator, device=device)
        noise = noise.to(self.original.device, self.original.dtype)
        return self.project(self.original + (2.0 * noise - 1.0) * self.epsilon)

    @torch.no_grad()
    def final_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image objective at ``x`` in eval mode, so results of different attacks compare."""
        with _eval_mode(self.model):
            return self.loss(x).detach()

    def keep_best(
        self, best_x: torch.Tensor | None, best_loss: torch.Tensor | None, x: torch.Tensor
    ) -> AttackResult:
        """Per image, keep ``x`` (scored by :meth:`final_loss`) where it beats the best so far."""
        loss = self.final_loss(x)
        if best_x is None or best_loss is None:
            return x.detach(), loss
        better = loss > best_loss
        return torch.where(better.view(-1, 1, 1, 1), x, best_x), torch.where(
            better, loss, best_loss)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode, restoring each one's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.train(flag)


def _update_best(
    best_x: torch.Tensor, best_loss: torch.Tensor, x: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image best point tracking on the device (strict improvement replaces)."""
    better = loss > best_loss
    return torch.where(better.view(-1, 1, 1, 1), x, best_x), torch.where(better, loss, best_loss)


# --------------------------------------------------------------------------------------------
# Attacks. All share the signature (model, images, targets, labels, epsilon, steps, *,
# objective, restarts, masks, generator) -> (adversarial images, per-image final loss).
# --------------------------------------------------------------------------------------------


def attack_pgd(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Faithful METHOD.md PGD (step 2.5 eps / steps, no random start, last iterate)."""
    problem = _Problem(model, images, targets, labels, epsilon, objective, masks)

    def summed(logits: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        return problem.objective(model, logits, batch_targets, problem.labels, problem.masks).sum()

    adversarial = pgd_attack(model, images, problem.targets, epsilon, steps, objective=summed)
    return adversarial, problem.final_loss(adversarial)


def attack_pgd_rs(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """PGD from uniform random starts with ``restarts`` runs; per image the best iterate of all."""
    problem = _Problem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0 or steps <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    alpha = 2.5 * epsilon / steps
    best_x = best_loss = None
    for _ in range(max(1, restarts)):
        x = problem.random_start(generator)
        run_x, run_loss = x, torch.full_like(problem.labels, -math.inf)
        for _ in range(steps):
            loss, grad = problem.loss_and_grad(x)
            run_x, run_loss = _update_best(run_x, run_loss, x, loss)
            x = problem.project(x + alpha * grad.sign())
        with torch.no_grad():  # the last iterate is a candidate too
            run_x, run_loss = _update_best(run_x, run_loss, x, problem.loss(x))
        # Across restarts compare with the same eval-mode loss that is reported, so more
        # restarts can never report a lower loss.
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def attack_fgsm(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """FGSM: one signed-gradient step of size epsilon from the clean images (``steps`` unused)."""
    problem = _Problem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    _, grad = problem.loss_and_grad(problem.original)
    adversarial = problem.project(problem.original + epsilon * grad.sign())
    return adversarial, problem.final_loss(adversarial)


APGD_MOMENTUM = 0.75
APGD_RHO = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD checkpoint iterations w_j = ceil(p_j * steps), distinct and ascending.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1.
    """
    # Exact fractions: in floats e.g. 0.22 + 0.19 = 0.41000000000000003, whose ceil(* 100) is 42.
    previous, current = Fraction(0), Fraction(22, 100)
    points = [Fraction(0)]
    while current <= 1:
        points.append(current)
        previous, current = current, current + max(
            current - previous - Fraction(3, 100), Fraction(6, 100))
    return sorted({math.ceil(p * steps) for p in points})


def attack_apgd(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Auto-PGD (Croce & Hein 2020), L-infinity, per-image step sizes; best over restarts.

    Step size starts at 2 eps; momentum 0.75; at each checkpoint an image's step size is halved
    and it restarts from its best point if fewer than 75 % of the steps since the last checkpoint
    raised its loss, or if its step size was not reduced at the last checkpoint and its best loss
    has not improved since. Every restart begins at a uniform random point of the ball.
    """
    problem = _Problem(model, images, targets, labels, epsilon, objective, masks)
    if epsilon <= 0 or steps <= 0:
        return problem.keep_best(None, None, problem.original.clone())
    checkpoints = apgd_checkpoints(steps)
    best_x = best_loss = None
    for _ in range(max(1, restarts)):
        run_x, _ = _apgd_run(problem, steps, checkpoints, problem.random_start(generator))
        best_x, best_loss = problem.keep_best(best_x, best_loss, run_x)
    return best_x, best_loss


def _apgd_run(
    problem: _Problem, steps: int, checkpoints: Sequence[int], start: torch.Tensor
) -> AttackResult:
    """One APGD run of ``steps`` gradient steps from ``start``; returns the best point and loss."""
    batch = start.shape[0]
    view = (-1, 1, 1, 1)
    eta = torch.full((batch,), 2.0 * problem.epsilon, device=start.device, dtype=start.dtype)
    x = x_previous = start
    best_x, best_grad = start, torch.zeros_like(start)
    best_loss = torch.full((batch,), -math.inf, device=start.device)
    loss_previous = best_loss
    successes = torch.zeros(batch, device=start.device)
    best_at_checkpoint = best_loss
    reduced_at_checkpoint = torch.zeros(batch, dtype=torch.bool, device=start.device)
    last_checkpoint = 0
    later_checkpoints = set(checkpoints) - {0}
    for k in range(steps):
        loss, grad = problem.loss_and_grad(x)  # f(x_k) and its gradient
        if k > 0:
            successes = successes + (loss > loss_previous).float()
        better = loss > best_loss
        best_x = torch.where(better.view(view), x, best_x)
        best_grad = torch.where(better.view(view), grad, best_grad)
        best_loss = torch.where(better, loss, best_loss)
        loss_previous = loss
        if k == 0:
            best_at_checkpoint = best_loss  # f_max at w_0 = 0
        elif k in later_checkpoints:
            # Condition 1: too few successful steps; condition 2: the step size was not reduced
            # at the previous checkpoint and the best loss did not rise since.
            too_few = successes < APGD_RHO * (k - last_checkpoint)
            stalled = ~reduced_at_checkpoint & (best_loss <= best_at_checkpoint)
            reduce = too_few | stalled
            eta = torch.where(reduce, eta / 2.0, eta)
            # Restart reduced images from their best point, without momentum.
            x = torch.where(reduce.view(view), best_x, x)
            x_previous = torch.where(reduce.view(view), best_x, x_previous)
            grad = torch.where(reduce.view(view), best_grad, grad)
            loss_previous = torch.where(reduce, best_loss, loss_previous)
            reduced_at_checkpoint = reduce
            best_at_checkpoint = best_loss
            successes = torch.zeros_like(successes)
            last_checkpoint = k
        z = problem.project(x + eta.view(view) * grad.sign())
        if k == 0:
            x_next = z
        else:
            momentum = APGD_MOMENTUM * (z - x) + (1.0 - APGD_MOMENTUM) * (x - x_previous)
            x_next = problem.project(x + momentum)
        x_previous, x = x, x_next
    with torch.no_grad():  # the last iterate is a candidate too
        best_x, best_loss = _update_best(best_x, best_loss, x, problem.loss(x))
    return best_x, best_loss


DEFAULT_WORST_MEMBERS = ("pgd", "apgd", "pgd-rs")


def attack_worst(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    *,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    members: Sequence[str] = DEFAULT_WORST_MEMBERS,
) -> AttackResult:
    """Run each member attack in turn; per image keep the result with the highest eval loss."""
    if not members or "worst" in members:
        raise ValueError(f"worst needs member attacks other than itself, got {list(members)}")
    best_x = best_loss = None
    for name in members:
        x, loss = _lookup(name)(model, images, targets, labels, epsilon, steps,
                                objective=objective, restarts=restarts, masks=masks,
                                generator=generator)
        if best_x is None or best_loss is None:
            best_x, best_loss = x, loss
        else:  # every member reports the same eval-mode objective, so losses compare directly
            best_x, best_loss = _update_best(best_x, best_loss, x, loss)
    return best_x, best_loss


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "pgd": attack_pgd,
    "pgd-rs": attack_pgd_rs,
    "fgsm": attack_fgsm,
    "apgd": attack_apgd,
    "worst": attack_worst,
}


def _lookup(name: str) -> Callable[..., AttackResult]:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: choose from {sorted(ATTACKS)}")
    return ATTACKS[name]


def run_attack(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    epsilon: float,
    steps: int,
    objective: str | PerImageObjective = "mask",
    restarts: int = 1,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    members: Sequence[str] | None = None,
) -> AttackResult:
    """Run attack ``name`` (see ``ATTACKS``); return adversarial images and per-image final loss.

    ``epsilon`` is in [0, 1] pixel units; ``labels`` (B,) are 0 normal / 1 anomalous (None:
    derived from ``targets``); ``masks`` are (B, [1,] H, W) ground-truth masks or None;
    ``members`` only applies to ``worst``. The final loss is the objective in eval mode.
    """
    attack = _lookup(name)
    kwargs = {}
    if members is not None:
        if name != "worst":
            raise ValueError(f"members only apply to the 'worst' attack, not {name!r}")
        kwargs["members"] = tuple(members)
    return attack(model, images, targets, labels, epsilon, steps, objective=objective,
                  restarts=restarts, masks=masks, generator=generator, **kwargs)
