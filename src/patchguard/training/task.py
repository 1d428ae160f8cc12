"""One training step apart from the loop: its views, its training attack and its loss terms.

A :class:`TrainingTask` turns a batch into the views the loss sees (clean, pseudo anomalies
and, with adversarial training, their attacked twins), makes the attacked views with the
training attack named by ``train_attack`` (:data:`patchguard.config.TRAINING_ATTACKS`) and
adds up the loss terms of :data:`LOSS_TERMS`, returning every loss by name. The loop in
:mod:`.trainer` only meters, checkpoints and handles signals. A new training recipe is one
training-attack entry, or one :class:`LossTerm` here plus the config field holding its weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..adversarial.objectives import anomalous_views
from ..adversarial.training_attacks import fgsm_rs_attack, nfgsm_attack, pgd_attack
from ..config import TRAINING_ATTACKS, TRAINING_OBJECTIVES, TrainConfig
from ..models.patchguard import PatchGuard, patch_targets
from .distributed import DistContext, average_gradients
from .losses import attention_kl_regularizer, binary_kl, pairwise_ranking_loss, patch_bce_loss
from .robust import AdvSchedule, PerturbationBank

VIEW_NAMES = ("clean", "adv_clean", "pseudo", "adv_pseudo")


class StepResult:
    """Losses of one training step, kept on the device until a value is read.

    Reading ``total``, ``reg``, ``views`` or ``losses`` copies all of them to the host at once
    (one synchronisation); the training loop instead sums :attr:`values` on the device and
    reads them once per logging interval.
    """

    def __init__(self, values: torch.Tensor, names: Sequence[str]) -> None:
        self.values = values  # total, regulariser, then each name's loss (views, then terms)
        self.names = tuple(names)
        self._host: list[float] | None = None

    def _floats(self) -> list[float]:
        if self._host is None:
            self._host = self.values.tolist()
        return self._host

    @property
    def total(self) -> float:
        """The loss the optimiser stepped on."""
        return self._floats()[0]

    @property
    def reg(self) -> float:
        """Sum of the views' attention regularisers."""
        return self._floats()[1]

    @property
    def views(self) -> dict[str, float]:
        """Each view's loss (its per-view terms: BCE plus its regulariser)."""
        return {k: v for k, v in self.losses.items() if k in VIEW_NAMES}

    @property
    def losses(self) -> dict[str, float]:
        """Every logged loss by name: ``loss``, ``reg``, each view's, each batch term's."""
        return dict(zip(("loss", "reg", *self.names), self._floats()))


@dataclass
class Forward:
    """What a loss term reads: the model's output on all views stacked, their patch targets,
    the views' names in stacking order and the batch size (one view's rows)."""

    task: TrainingTask
    output: object  # PatchGuardOutput: .logits (V*B, N), .attentions
    targets: torch.Tensor
    names: Sequence[str]
    batch_size: int

    def part(self, name: str) -> slice:
        """The rows of view ``name``."""
        i = list(self.names).index(name)
        return slice(i * self.batch_size, (i + 1) * self.batch_size)


@dataclass(frozen=True)
class LossTerm:
    """One term of the training loss: its logged name, its weight in the total (from the
    config; 0 switches it off) and the function computing it.

    A per-view term is computed on each view's rows and counts in that view's logged loss
    (and, when ``logged``, its sum over the views is logged under its name, 0 when off); a
    batch term is computed once over all views and logged, unweighted, under its name when on.
    ``attention``: the term reads the backbone's attention maps (the forward then returns them).
    """

    name: str
    weight: Callable[[TrainConfig], float]
    function: Callable[[Forward, slice], torch.Tensor] | Callable[[Forward], torch.Tensor]
    per_view: bool = False
    logged: bool = True
    attention: bool = False


def _bce(forward: Forward, part: slice) -> torch.Tensor:
    return patch_bce_loss(forward.output.logits[part], forward.targets[part])


def _attention_reg(forward: Forward, part: slice) -> torch.Tensor:
    return attention_kl_regularizer([a[part] for a in forward.output.attentions],
                                    forward.task.config.reg_coefficients)


def _trades(forward: Forward) -> torch.Tensor:
    """KL between each view's patch logits and its attacked twin's (views present only)."""
    logits = forward.output.logits
    trades = torch.zeros((), device=logits.device)
    for plain, attacked in (("clean", "adv_clean"), ("pseudo", "adv_pseudo")):
        if plain in forward.names and attacked in forward.names:
            trades = trades + binary_kl(logits[forward.part(plain)],
                                        logits[forward.part(attacked)])
    return trades


def _rank(forward: Forward) -> torch.Tensor:
    """Pairwise ranking of the top-k image scores of all views: anomalous above normal.

    The decision an attacker moves, trained directly: the attacked views' scores are the worst
    case the training attack found (with the score objective)."""
    model = forward.task.model
    return pairwise_ranking_loss(model.image_score(forward.output.logits.float()),
                                 anomalous_views(forward.targets))


# Every term of the training loss, in the order they are summed (the order fixes the float
# rounding the numerics test pins down).
LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("bce", lambda config: 1.0, _bce, per_view=True, logged=False),
    LossTerm("reg", lambda config: float(config.reg), _attention_reg, per_view=True,
             attention=True),
    LossTerm("trades", lambda config: config.trades_weight, _trades),
    LossTerm("rank", lambda config: config.rank_weight, _rank),
)


@dataclass
class Views:
    """A batch on the device: clean and pseudo-anomalous images, their patch targets."""

    clean: torch.Tensor
    pseudo: torch.Tensor
    clean_targets: torch.Tensor
    pseudo_targets: torch.Tensor
    index: torch.Tensor | None

    @property
    def batch_size(self) -> int:
        """Images per view."""
        return self.clean.shape[0]


class TrainingTask:
    """A model's training step: views, training attack and loss terms -> named losses.

    Built once per run; :meth:`step` does one optimisation step (or, for ``free``, its
    replays) and returns a :class:`StepResult`. Nothing here waits for the device: a non-finite
    loss is caught where the loop reads the losses, before anything is checkpointed.
    """

    def __init__(self, model: PatchGuard, config: TrainConfig, device: torch.device,
                 ctx: DistContext | None = None) -> None:
        self.model, self.config, self.device, self.ctx = model, config, device, ctx
        # bf16 autocast is meant for GPUs; on CPUs it runs (slower) and serves numerics checks.
        self.autocast_dtype = torch.bfloat16 if config.bf16 else None
        self.terms = [(term, term.weight(config)) for term in LOSS_TERMS]
        self.attack: TrainingAttack | None = (
            TRAINING_ATTACKS[config.train_attack] if config.adv_train else None)

    def views(self, batch: dict[str, torch.Tensor]) -> Views:
        """The batch's images and patch targets on the device."""
        pseudo_targets = patch_targets(batch["pseudo_mask"].to(self.device, non_blocking=True),
                                       self.model.patch_size)
        return Views(batch["image"].to(self.device, non_blocking=True),
                     batch["pseudo_image"].to(self.device, non_blocking=True),
                     torch.zeros_like(pseudo_targets), pseudo_targets, batch.get("index"))

    def schedule(self, schedule: AdvSchedule | None) -> AdvSchedule:
        """This step's attack budget (default: ``epsilon_train`` and ``steps_train``)."""
        return schedule or AdvSchedule(self.config.epsilon_train / 255.0,
                                       self.config.steps_train)

    def losses(self, images: torch.Tensor, targets: torch.Tensor,
               names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every loss by name, from one forward over all views stacked in ``names`` order.

        ``loss`` is the weighted total (with its graph), each logged per-view term's name
        (``reg``) its sum over the views, each view's name its per-view terms, each active
        batch term's name its unweighted value (all but ``loss`` detached).
        """
        batch_size = images.shape[0] // len(names)
        needs_attention = any(w > 0 for t, w in self.terms if t.attention)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            output = self.model(images, with_attention=needs_attention)
        forward = Forward(self, output, targets, names, batch_size)
        total = torch.zeros((), device=self.device)
        per_view = [(t, w) for t, w in self.terms if t.per_view and w > 0]
        logged: dict[str, torch.Tensor] = {}
        sums: dict[str, list[torch.Tensor]] = {t.name: [] for t, _ in self.terms
                                               if t.per_view and t.logged}
        for name in names:
            part = forward.part(name)
            loss = None
            for term, weight in per_view:
                value = term.function(forward, part)
                if term.logged:
                    sums[term.name].append(value.detach())
                value = value if weight == 1.0 else weight * value
                loss = value if loss is None else loss + value
            logged[name] = loss.detach()
            total = total + loss
        for term, weight in self.terms:
            if not term.per_view and weight > 0:
                value = term.function(forward)
                total = total + weight * value
                logged[term.name] = value.detach()
        zero = torch.zeros((), device=self.device)
        return {"loss": total, **{k: torch.stack(v).sum() if v else zero
                                  for k, v in sums.items()}, **logged}

    def optimise(self, total: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward ``total``, average the gradients over ranks, step the optimiser."""
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.ctx is not None:
            average_gradients([p for g in optimizer.param_groups for p in g["params"]],
                              self.ctx)
        optimizer.step()

    def step(self, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             schedule: AdvSchedule | None = None,
             bank: PerturbationBank | None = None) -> StepResult:
        """One training step over the views of ``batch``.

        ``schedule`` is this step's attack budget (default: ``epsilon_train`` and
        ``steps_train``); ``bank`` holds the clean views' carried perturbations
        (``carry_perturbations``).
        """
        if self.attack is None:
            views = self.views(batch)
            return self.descend(views, {"clean": views.clean, "pseudo": views.pseudo},
                                optimizer)
        return self.attack.step(self, batch, optimizer, self.schedule(schedule), bank)

    def descend(self, views: Views, images: dict[str, torch.Tensor],
                optimizer: torch.optim.Optimizer) -> StepResult:
        """One optimiser step on the losses of the views in ``images`` (name -> images)."""
        names = [name for name in VIEW_NAMES if name in images]
        targets = {"clean": views.clean_targets, "adv_clean": views.clean_targets,
                   "pseudo": views.pseudo_targets, "adv_pseudo": views.pseudo_targets}
        losses = self.losses(torch.cat([images[n] for n in names]),
                             torch.cat([targets[n] for n in names]), names)
        self.optimise(losses["loss"], optimizer)
        return result_of(losses)


def result_of(losses: dict[str, torch.Tensor]) -> StepResult:
    """The :class:`StepResult` of :meth:`TrainingTask.losses`' dict."""
    names = [k for k in losses if k not in ("loss", "reg")]
    return StepResult(torch.stack([losses["loss"].detach(), losses["reg"],
                                   *(losses[k] for k in names)]), names)


class TrainingAttack:
    """How a training step gets its attacked views (an entry of ``TRAINING_ATTACKS``)."""

    def step(self, task: TrainingTask, batch: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, schedule: AdvSchedule,
             bank: PerturbationBank | None) -> StepResult:
        """One training step with attacked views."""
        raise NotImplementedError


Perturb = Callable[..., torch.Tensor]


class AttackThenDescend(TrainingAttack):
    """Attack the clean and pseudo views, then one optimiser step on all four views.

    One attack run over clean and pseudo images together (2B): the objective is a sum of
    per-image terms and the model treats images independently, so each image gets the
    perturbation a run of its own would give (dropout masks aside, drawn from the same
    distribution), with half the passes and larger matrix products. The model stays in train
    mode, so the attack sees the discriminator's dropout (faithful).
    """

    def __init__(self, perturb: Perturb) -> None:
        self.perturb = perturb

    def step(self, task: TrainingTask, batch: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, schedule: AdvSchedule,
             bank: PerturbationBank | None) -> StepResult:
        """Attacked views from the bank's start (clean half) or zero, then one descent."""
        views = task.views(batch)
        start = None
        if bank is not None:
            # Carried perturbations for the clean half, none for the fresh pseudo anomalies.
            start = torch.cat([bank.get(views.index), torch.zeros_like(views.pseudo)])
        adversarial = self.perturb(
            task.model, torch.cat([views.clean, views.pseudo]),
            torch.cat([views.clean_targets, views.pseudo_targets]),
            TRAINING_OBJECTIVES[task.config.train_objective](task.model), schedule,
            task.autocast_dtype, start)
        n = views.batch_size
        if bank is not None:
            bank.put(views.index, adversarial[:n], views.clean)
        return task.descend(views, {"clean": views.clean, "adv_clean": adversarial[:n],
                                    "pseudo": views.pseudo, "adv_pseudo": adversarial[n:]},
                            optimizer)


def _pgd(model, images, targets, objective, schedule, autocast_dtype, start):
    # With the mask objective and no start: the paper's attack, call for call.
    return pgd_attack(model, images, targets, schedule.epsilon, schedule.steps,
                      objective=objective, autocast_dtype=autocast_dtype, start=start)


def _fgsm_rs(model, images, targets, objective, schedule, autocast_dtype, start):
    return fgsm_rs_attack(model, images, targets, schedule.epsilon, objective, start=start,
                          autocast_dtype=autocast_dtype)


def _nfgsm(model, images, targets, objective, schedule, autocast_dtype, start):
    return nfgsm_attack(model, images, targets, schedule.epsilon, objective,
                        autocast_dtype=autocast_dtype)


class FreeReplays(TrainingAttack):
    """Free adversarial training (Shafahi et al. 2019): the batch is replayed ``free_replays``
    times; each replay's single backward pass gives both the weight gradients (one optimiser
    step) and the input gradient of the attacked views, from which their perturbations take a
    signed step of epsilon (projected to the ball). The perturbation of the clean views starts
    from the bank when perturbations are carried, else at zero, as the pseudo anomalies'."""

    def step(self, task: TrainingTask, batch: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, schedule: AdvSchedule,
             bank: PerturbationBank | None) -> StepResult:
        """``free_replays`` optimiser steps; the losses are their mean."""
        views = task.views(batch)
        n, eps = views.batch_size, schedule.epsilon
        originals = torch.cat([views.clean, views.pseudo])
        delta = torch.zeros_like(originals)
        if bank is not None:
            delta[:n] = bank.get(views.index).clamp(-eps, eps)
        targets = torch.cat([views.clean_targets, views.clean_targets, views.pseudo_targets,
                             views.pseudo_targets])
        sums: torch.Tensor | None = None
        for _ in range(task.config.free_replays):
            attacked = (originals + delta).clamp(0.0, 1.0).requires_grad_(True)
            images = torch.cat([views.clean, attacked[:n], views.pseudo, attacked[n:]])
            losses = task.losses(images, targets, VIEW_NAMES)
            task.optimise(losses["loss"], optimizer)  # weight gradients and attacked.grad
            with torch.no_grad():
                delta = (delta + eps * attacked.grad.sign()).clamp(-eps, eps)
            values = result_of(losses)
            sums = values.values if sums is None else sums + values.values
        if bank is not None:
            bank.put(views.index, (views.clean + delta[:n]).clamp(0.0, 1.0), views.clean)
        return StepResult(sums / task.config.free_replays, values.names)


# The implementations behind the names of patchguard.config.TRAINING_ATTACKS.
PGD = AttackThenDescend(_pgd)
FGSM_RS = AttackThenDescend(_fgsm_rs)
N_FGSM = AttackThenDescend(_nfgsm)
FREE = FreeReplays()


def training_step(
    model: PatchGuard,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext | None = None,
    schedule: AdvSchedule | None = None,
    bank: PerturbationBank | None = None,
) -> StepResult:
    """One step of a :class:`TrainingTask` built for this call (scripts and tests; the
    trainer builds its task once)."""
    return TrainingTask(model, config, device, ctx).step(batch, optimizer, schedule, bank)
