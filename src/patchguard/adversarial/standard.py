"""``standard``: one fixed, citable robustness evaluation, the worst case per image and metric.

Per image it runs every member of :data:`STANDARD_MEMBERS` (fixed attack, objective and
budget, whatever ``--objective`` / ``--steps-test`` / ``--queries`` / ``--restarts`` say) and
keeps, separately for each metric family, the member result that hurts that metric most:

- image-level metrics (image AUROC, AP, F1-max) use the result with the highest ``score``
  objective: per image the highest score of a normal image and the lowest of an anomalous
  one, so the standard image AUROC is at most every member's;
- pixel-level metrics (pixel AUROC, AP, F1-max, AUPRO) use the result with the highest ``map``
  objective (mean map over normal pixels minus over anomalous pixels, per image).

In one line: *"standard (patchguard): per image and metric family the worst of APGD-100 on the
image score, APGD-100 on the anomaly map, the paper's PGD-10 on its mask objective and
Square-1000 on the image score, L-infinity."*

A detector without patch logits (any detector other than PatchGuard, e.g. PatchCore) has no
``mask`` objective: its standard evaluation skips the PGD member, and its rows say so. No
substitute is run: the ``mask`` objective is the mean normal minus mean anomalous patch logit,
and the ``map`` member already attacks that same difference on the anomaly map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .apgd import attack_apgd
from .early_stop import scores_from_score_objective
from .gradient import attack_pgd
from .objectives import needs_patch_logits
from .problem import AttackBudget, AttackProblem, AttackResult
from .square import attack_square

STANDARD_APGD_STEPS = 100  # well above APGD_MIN_STEPS; the budget APGD was designed for
STANDARD_PGD_STEPS = 10  # the paper's own evaluation attack, as it reports it
STANDARD_SQUARE_QUERIES = 1000

IMAGE_OBJECTIVE = "score"  # decides the worst case for image-level metrics
PIXEL_OBJECTIVE = "map"  # decides it for pixel-level metrics

# The member attacks by name (the registry's functions; imported directly, not through the
# registry, which itself lists ``standard``).
MEMBER_ATTACKS: dict[str, Callable[[AttackProblem, AttackBudget], AttackResult]] = {
    "apgd": attack_apgd, "pgd": attack_pgd, "square": attack_square,
}


@dataclass(frozen=True)
class Member:
    """One fixed member of an ensemble: attack name, objective and budget."""

    attack: str
    objective: str
    steps: int = 0
    queries: int | None = None

    def describe(self) -> str:
        """Short label, e.g. ``apgd/score/100 steps`` or ``square/score/1000 queries``."""
        budget = f"{self.queries} queries" if self.queries is not None else f"{self.steps} steps"
        return f"{self.attack}/{self.objective}/{budget}"


STANDARD_MEMBERS: tuple[Member, ...] = (
    Member("apgd", "score", steps=STANDARD_APGD_STEPS),
    Member("apgd", "map", steps=STANDARD_APGD_STEPS),
    Member("pgd", "mask", steps=STANDARD_PGD_STEPS),
    Member("square", "score", queries=STANDARD_SQUARE_QUERIES),
)

SKIPPED_NO_PATCH_LOGITS = "needs patch logits"


def standard_members(patch_logits: bool, members: Sequence[Member] | None = None
                     ) -> tuple[list[Member], list[Member]]:
    """The members run for a detector with or without patch logits, and the ones skipped."""
    members = list(STANDARD_MEMBERS if members is None else members)
    run = [m for m in members if patch_logits or not needs_patch_logits(m.objective)]
    return run, [m for m in members if m not in run]


def describe_members(members: Sequence[Member]) -> str:
    """The members as one line, e.g. for a results row."""
    return ", ".join(m.describe() for m in members)


@dataclass
class MetricAdversarials:
    """Adversarial images per metric family, the deciding objective at each, and its source.

    Image-level metrics are computed on ``image``, pixel-level ones on ``pixel``; for a single
    attack both are the same tensor (and both losses its own objective). ``image_member`` /
    ``pixel_member`` (B,) index the ensemble member each image's worst case came from.
    """

    image: torch.Tensor
    pixel: torch.Tensor
    image_loss: torch.Tensor
    pixel_loss: torch.Tensor
    image_member: torch.Tensor | None = None
    pixel_member: torch.Tensor | None = None
    # standard: the image scores at ``image`` (read off ``image_loss``, the score objective)
    # and the anomaly maps (B, H, W) at ``pixel`` (kept from the pass that chose them; None
    # where a member skipped images), so that the evaluation need not score them again.
    image_scores: torch.Tensor | None = None
    pixel_maps: torch.Tensor | None = None


def member_generators(members: Sequence[Member] | None, seed: int
                      ) -> dict[Member, torch.Generator]:
    """One generator per member, each seeded with ``seed``.

    Given to :func:`attack_standard_per_metric` (``budget.member_generators``) for a whole
    evaluation, each member draws exactly the random numbers it would draw run alone with the
    same seed, so per image standard is the worst of the very results of the members run alone
    (``patchguard test --attack apgd --objective score --steps-test 100`` and so on).
    """
    return {m: torch.Generator().manual_seed(seed)
            for m in (STANDARD_MEMBERS if members is None else members)}


def member_candidates(problem: AttackProblem, budget: AttackBudget,
                      members: Sequence[Member]) -> list[torch.Tensor]:
    """Each member's adversarial images, in order: member ``m`` draws from
    ``budget.member_generators[m]`` when given, else all draw from ``budget.generator``."""
    return [_run_member(problem, budget, member) for member in members]


def _run_member(problem: AttackProblem, budget: AttackBudget, member: Member) -> torch.Tensor:
    """One member's adversarial images (its own budget, objective and generator)."""
    own_generators = budget.member_generators or {}
    own = replace(budget, steps=member.steps, restarts=1,
                  queries=member.queries or budget.queries, members=None,
                  generator=own_generators.get(member, budget.generator),
                  member_generators=None)
    attack = MEMBER_ATTACKS[member.attack]
    return attack(problem.with_objective(member.objective), own)[0]


def _worst(candidates: Sequence[torch.Tensor], values: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image the candidate with the highest value ((M, B) values; ties: the first)."""
    index = values.argmax(dim=0)  # argmax returns the first maximum
    stacked = torch.stack(list(candidates))
    picked = stacked.gather(0, index.view(1, -1, 1, 1, 1).expand(1, *stacked.shape[1:]))[0]
    return picked, values.gather(0, index.view(1, -1))[0], index


def _values(problem: AttackProblem, x: torch.Tensor, ran: torch.Tensor | None
            ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The image and pixel objectives at ``x`` of the images a member ran on (``ran``, a
    (B,) mask; None: all), minus infinity for the others, which it left alone; and the
    anomaly maps at ``x`` of the same pass when it covered every image (else None)."""
    objectives = (IMAGE_OBJECTIVE, PIXEL_OBJECTIVE)
    if ran is None or bool(ran.all()):
        return problem.values_and_maps(x, objectives)
    filled = [torch.full_like(problem.labels, -math.inf) for _ in objectives]
    index = ran.nonzero().squeeze(1)
    if len(index):
        for full, part in zip(filled, problem.rows(index).values(x[index], objectives)):
            full[index] = part
    return filled, None


def attack_standard_per_metric(problem: AttackProblem, budget: AttackBudget,
                               members: Sequence[Member] | None = None) -> MetricAdversarials:
    """Run the members (default: the standard ones the detector supports); per image keep each
    metric family's worst case. ``budget`` gives only the generator: members have their own.

    The clean image is a candidate of the image metrics' worst case too (the attacker may
    leave an image alone; it wins only where it is strictly worse for the model than every
    member's result, and then ``image_member`` is the number of members). With
    ``problem.stop`` (:class:`.early_stop.ImageStop`) an image is no longer attacked once it
    can no longer change an image metric; its later members' results are left out.
    """
    run, _ = standard_members(problem.supports_patch_objectives, members)
    stop = problem.stop
    if problem.clean_scores is not None:  # the clean pass's scores: no second forward
        clean_value = (1.0 - 2.0 * problem.labels) * problem.clean_scores
    else:
        clean_value = problem.values(problem.original, (IMAGE_OBJECTIVE,))[0]
    candidates, image_values, pixel_values, maps = [], [], [], []
    for member in run:
        ran = None if stop is None else stop.active.clone()
        x = _run_member(problem, budget, member)
        (image_value, pixel_value), member_maps = _values(problem, x, ran)
        candidates.append(x)
        image_values.append(image_value)
        pixel_values.append(pixel_value)
        maps.append(member_maps)
        if stop is not None:
            stop.reached(scores_from_score_objective(image_value, problem.labels), ran)
    image_x, image_loss, image_member = _worst(
        [*candidates, problem.original], torch.stack([*image_values, clean_value]))
    pixel_x, pixel_loss, pixel_member = _worst(candidates, torch.stack(pixel_values))
    pixel_maps = None
    if maps and all(m is not None for m in maps):
        stacked = torch.stack(maps)  # (M, B, H, W)
        pixel_maps = stacked.gather(
            0, pixel_member.view(1, -1, 1, 1).expand(1, *stacked.shape[1:]))[0]
    return MetricAdversarials(image_x, pixel_x, image_loss, pixel_loss, image_member,
                              pixel_member,
                              scores_from_score_objective(image_loss, problem.labels),
                              pixel_maps)


def attack_standard(problem: AttackProblem, budget: AttackBudget) -> AttackResult:
    """The standard members; per image the result with the highest objective of ``problem``.

    The members' budgets are fixed (``budget`` gives the generator, and ``budget.members``
    other :class:`Member` budgets when set). Evaluation uses :func:`attack_standard_per_metric`,
    which picks per metric family instead.
    """
    run, _ = standard_members(problem.supports_patch_objectives, budget.members)
    candidates = member_candidates(problem, budget, run)
    values = torch.stack([problem.final_loss(x) for x in candidates])
    picked, loss, _ = _worst(candidates, values)
    return picked, loss
