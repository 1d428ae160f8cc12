"""Audit a published robustness figure: the paper's own attack beside ``standard``, per class.

One class's audit runs, on one model and test set,

* the paper's side: exactly the authors' evaluation, PGD with the mask objective (10 steps) at
  4/255 and 8/255, plus the clean row;
* the worst-case side: the fixed ``standard`` ensemble at 2/255 and 8/255;
* the sanity checks against gradient masking (:func:`.sanity.sanity_check`) on the paper's
  attack, which say whether that attack behaves like an attack at all.

:func:`class_table` renders one class, :func:`summary_line` says in plain words how far
``standard`` moves each figure from the paper's attack, and :func:`audit_markdown` puts both in
one document. The command (``patchguard audit``) lives in :mod:`patchguard.cli.audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..adversarial.settings import AttackSettings
from ..adversarial.standard import (
    STANDARD_APGD_STEPS,
    STANDARD_MEMBERS,
    STANDARD_PGD_STEPS,
    STANDARD_SQUARE_QUERIES,
    Member,
)
from .evaluator import evaluate
from .report.tables import render_table

#: The paper's evaluation: its attack, objective, steps and the epsilons its notebook uses.
PAPER_ATTACK, PAPER_OBJECTIVE, PAPER_STEPS = "pgd", "mask", STANDARD_PGD_STEPS
PAPER_EPSILONS = (4.0, 8.0)
#: The worst-case side: 2/255 (the budget for 224-px data) and 8/255 (the paper's), always both.
STANDARD_EPSILONS = (2.0, 8.0)
#: The epsilon both sides share: where standard's figure is compared with the paper's.
SHARED_EPSILON = 8.0
METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
PAPER_SIDE, STANDARD_SIDE = "paper", "standard"


@dataclass(frozen=True)
class AuditBudget:
    """The attack budgets of an audit; the defaults are the paper's and ``standard``'s own.

    Smaller budgets (quick looks, tests) are recorded with the results and named in the table:
    only the defaults give the citable figures.
    """

    pgd_steps: int = PAPER_STEPS  # the paper's side, and standard's PGD member
    apgd_steps: int = STANDARD_APGD_STEPS
    square_queries: int = STANDARD_SQUARE_QUERIES
    sanity: bool = True

    @property
    def citable(self) -> bool:
        """True with the paper's steps and standard's fixed members."""
        return (self.pgd_steps, self.apgd_steps, self.square_queries) == (
            PAPER_STEPS, STANDARD_APGD_STEPS, STANDARD_SQUARE_QUERIES)

    def members(self) -> tuple[Member, ...] | None:
        """``standard``'s members: None (the fixed ones) unless a budget was changed.

        Its PGD member is always the paper's side's own attack (the same steps, and the same
        random draws), so per image standard is never weaker than the paper's attack.
        """
        if self.citable:
            return None
        steps = {"apgd": self.apgd_steps, "pgd": self.pgd_steps}
        return tuple(Member(m.attack, m.objective, steps=steps.get(m.attack, m.steps),
                            queries=self.square_queries if m.queries is not None else None)
                     for m in STANDARD_MEMBERS)

    def settings(self, batch_size: int = 16) -> tuple[AttackSettings, AttackSettings]:
        """One attack-settings value per side of the table: the paper's, then standard's."""
        paper = AttackSettings(attacks=(PAPER_ATTACK,), epsilons=(0.0, *PAPER_EPSILONS),
                               steps=self.pgd_steps, objective=PAPER_OBJECTIVE,
                               batch_size=batch_size)
        worst = AttackSettings(attacks=("standard",), epsilons=STANDARD_EPSILONS,
                               steps=self.pgd_steps, standard_members=self.members(),
                               batch_size=batch_size)
        return paper, worst

    def to_dict(self) -> dict[str, Any]:
        """The budgets as recorded in the results (and compared when an audit resumes)."""
        return asdict(self)


def audit_class(model: Any, test_set: Any, budget: AuditBudget = AuditBudget(), *,
                batch_size: int = 16, device: torch.device | str = "cpu",
                progress: bool = True) -> dict[str, Any]:
    """Run both sides of the table and the sanity checks on one class; return plain data.

    The result holds ``rows`` (each tagged with its ``side``), the ``sanity`` checks and
    warnings (None when skipped) and the ``budget``.
    """
    paper_settings, standard_settings = budget.settings(batch_size)
    paper = evaluate(model, test_set, paper_settings, device=device, progress=progress)
    worst = evaluate(model, test_set, standard_settings, device=device, progress=progress)
    rows = [{**row, "side": PAPER_SIDE if row["attack"] != "standard" else STANDARD_SIDE}
            for row in (*paper, *worst)]
    sanity = None
    if budget.sanity:
        from .sanity import sanity_check

        report = sanity_check(model, test_set, attack=PAPER_ATTACK, objective=PAPER_OBJECTIVE,
                              steps=budget.pgd_steps, batch_size=batch_size, device=device,
                              progress=progress, square_queries=budget.square_queries)
        sanity = {"probed": f"{PAPER_ATTACK}/{PAPER_OBJECTIVE}, {budget.pgd_steps} steps",
                  "checks": report.checks, "warnings": report.warnings}
    return {"rows": rows, "sanity": sanity, "budget": budget.to_dict()}


def _row(rows: Sequence[dict[str, Any]], attack: str, epsilon: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["attack"] == attack and r["epsilon"] == epsilon), None)


def _value(row: dict[str, Any] | None, metric: str) -> float | None:
    return None if row is None else row.get(metric)


def _difference(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else new - old


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def columns(budget: dict[str, Any]) -> list[tuple[str, str, float]]:
    """The table's figure columns: (title, attack, epsilon), clean first."""
    steps = budget.get("pgd_steps", PAPER_STEPS)
    return [("clean", "clean", 0.0),
            *[(f"paper PGD-{steps} {e:g}/255", PAPER_ATTACK, e) for e in PAPER_EPSILONS],
            *[(f"standard {e:g}/255", "standard", e) for e in STANDARD_EPSILONS]]


def class_table(name: str, result: dict[str, Any], markdown: bool = True) -> str:
    """One class: a row per metric, a column per setting, and standard minus paper at 8/255."""
    rows, budget = result["rows"], result["budget"]
    cols = columns(budget)
    header = ["metric", *(title for title, _, _ in cols),
              f"standard - paper at {SHARED_EPSILON:g}/255"]
    body = []
    for metric, label in METRICS:
        values = [_value(_row(rows, attack, eps), metric) for _, attack, eps in cols]
        if all(v is None for v in values):
            continue
        moved = _difference(_value(_row(rows, "standard", SHARED_EPSILON), metric),
                            _value(_row(rows, PAPER_ATTACK, SHARED_EPSILON), metric))
        body.append([label, *values, _signed(moved)])
    first = rows[0] if rows else {}
    lines = [f"### {name}" if markdown else name,
             f"{first.get('n_images', '?')} test images ({first.get('n_anomalous', '?')} "
             "anomalous)" + (f"; checkpoint {first['checkpoint']}" if first.get("checkpoint")
                             else ""), "",
             render_table(header, body, markdown=markdown, digits=3)]
    if not _budget_of(result).citable:
        lines.append(f"\nsmaller budgets than the paper's and standard's (PGD {budget['pgd_steps']}"
                     f" steps, APGD {budget['apgd_steps']} steps, Square {budget['square_queries']}"
                     " queries): not citable figures")
    lines += ["", sanity_text(result.get("sanity"))]
    return "\n".join(lines)


def _budget_of(result: dict[str, Any]) -> AuditBudget:
    """The budget a stored result was made with."""
    return AuditBudget(**result["budget"])


def sanity_text(sanity: dict[str, Any] | None) -> str:
    """The sanity checks in a few lines (or that they were skipped)."""
    if sanity is None:
        return "sanity checks: skipped (--no-sanity); the figures are unchecked for masking"
    head = f"sanity checks on the paper's attack ({sanity['probed']}):"
    if not sanity["warnings"]:
        return f"{head} all {len(sanity['checks'])} passed"
    return "\n".join([head, *(f"- WARNING: {w}" for w in sanity["warnings"])])


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summary_line(results: dict[str, dict[str, Any]], dataset: str = "") -> str:
    """One sentence: how far standard moves each figure from the paper's attack (at 8/255)."""
    several = len(results) > 1
    where = (f"{len(results)} {dataset} classes (means)".strip() if several
             else f"{dataset} {next(iter(results), '')}".strip())
    parts = []
    for metric, label in METRICS[:2]:
        paper = _mean([_value(_row(r["rows"], PAPER_ATTACK, SHARED_EPSILON), metric)
                       for r in results.values()])
        worst = _mean([_value(_row(r["rows"], "standard", SHARED_EPSILON), metric)
                       for r in results.values()])
        if paper is None or worst is None:
            continue
        parts.append(f"{label} from {paper:.3f} under the paper's PGD to {worst:.3f} "
                     f"({_signed(worst - paper)})")
    low = STANDARD_EPSILONS[0]
    at_low = []
    for metric, label in METRICS[:2]:
        value = _mean([_value(_row(r["rows"], "standard", low), metric)
                       for r in results.values()])
        if value is not None:
            at_low.append(f"{label} at {value:.3f}")
    if not parts:
        return f"On {where}, no attacked figure could be compared."
    text = (f"On {where}, standard moves the figures at {SHARED_EPSILON:g}/255: "
            + "; ".join(parts) + ".")
    if at_low:
        text += (f" At {low:g}/255, which the paper does not report, standard leaves "
                 + " and ".join(at_low) + ".")
    if not all(_budget_of(r).citable for r in results.values()):
        text += " Smaller attack budgets than the paper's and standard's: not citable figures."
    warned = [name for name, r in results.items() if r.get("sanity") and r["sanity"]["warnings"]]
    if warned:
        text += f" Sanity warnings on {', '.join(warned)}: see below."
    return text


def summary_table(results: dict[str, dict[str, Any]], markdown: bool = True) -> str:
    """Every class in one table: clean, paper and standard at 8/255 and the move, per metric."""
    header = ["class"]
    for _, label in METRICS[:2]:
        header += [f"{label} clean", f"paper {SHARED_EPSILON:g}", f"standard {SHARED_EPSILON:g}",
                   "moved"]
    figures = {}  # class -> [clean, paper, standard, moved] per metric
    for name, result in results.items():
        rows, line = result["rows"], []
        for metric, _ in METRICS[:2]:
            paper = _value(_row(rows, PAPER_ATTACK, SHARED_EPSILON), metric)
            worst = _value(_row(rows, "standard", SHARED_EPSILON), metric)
            line += [_value(_row(rows, "clean", 0.0), metric), paper, worst,
                     _difference(worst, paper)]
        figures[name] = line
    if len(figures) > 1:
        figures["mean"] = [_mean(column) for column in zip(*figures.values())]
    # Every fourth figure is a move: shown with its sign.
    body = [[name, *(_signed(v) if i % 4 == 3 else v for i, v in enumerate(line))]
            for name, line in figures.items()]
    return render_table(header, body, markdown=markdown, digits=3)


def audit_markdown(results: dict[str, dict[str, Any]], dataset: str = "") -> str:
    """The whole audit: the summary sentence first, then the summary table and one per class."""
    parts = [summary_line(results, dataset), "", "## Summary", "", summary_table(results), "",
             "paper: the authors' evaluation (PGD, mask objective, 4/255 and 8/255); standard: "
             "the fixed worst-case ensemble (APGD on the score and on the map, the paper's PGD, "
             "Square), per image and metric the worst. 'moved' is standard minus paper at "
             f"{SHARED_EPSILON:g}/255: how far the worst case moves the paper's figure (a large "
             "negative move: the paper's attack overstates the robustness).",
             "", "## Classes"]
    for name, result in results.items():
        parts += ["", class_table(name, result)]
    return "\n".join(parts) + "\n"
