"""The registries of the evaluation attacks and their per-image objectives, importable without
torch.

Every name the command line offers, the checks accept and the docs list comes from
:data:`ATTACKS` and :data:`OBJECTIVES`; an entry names its function as ``"module:attribute"``,
imported the first time the attack is run, so that ``patchguard --help`` does not import
torch. A new attack is one entry here and its function (see CONTRIBUTING.md).
"""

from __future__ import annotations

from ..utils.registry import Entry, Registry

_HERE = "patchguard.adversarial"
_OBJECTIVES = "patchguard.adversarial.objectives"

# Traits: "queries" (the attack searches without gradients and counts model queries instead of
# steps), "ensemble" (it runs other attacks: not a member of worst or standard).
ATTACKS: Registry = Registry("attack", {
    "pgd": Entry(f"{_HERE}.gradient:attack_pgd", "the paper's PGD"),
    "pgd-rs": Entry(f"{_HERE}.gradient:attack_pgd_rs", "PGD from random starts (--restarts)"),
    "fgsm": Entry(f"{_HERE}.gradient:attack_fgsm", "one signed-gradient step"),
    "apgd": Entry(f"{_HERE}.apgd:attack_apgd", "auto-PGD (step-size schedule, momentum)"),
    "worst": Entry(f"{_HERE}.attacks:attack_worst", "per image the strongest of pgd, apgd, pgd-rs",
                   {"ensemble": True}),
    "square": Entry(f"{_HERE}.square:attack_square", "gradient-free Square Attack (--queries)",
                    {"queries": True}),
    "standard": Entry(f"{_HERE}.standard:attack_standard",
                      "the fixed citable ensemble, per image and metric the worst",
                      {"ensemble": True}),
})

# Traits: "patch_logits" (the objective needs the detector's patch logits and patch targets).
OBJECTIVES: Registry = Registry("objective", {
    "mask": Entry(f"{_OBJECTIVES}:mask_loss",
                  "the paper's: mean normal-patch logit minus mean anomalous-patch logit",
                  {"patch_logits": True}),
    "score": Entry(f"{_OBJECTIVES}:score_loss", "the image decision"),
    "map": Entry(f"{_OBJECTIVES}:map_loss", "the localisation (anomaly map)"),
})

# Derived views of the registries, for callers that need plain tuples.
ATTACK_NAMES = ATTACKS.names()
OBJECTIVE_NAMES = OBJECTIVES.names()
QUERY_ATTACKS = tuple(name for name in ATTACKS if ATTACKS.trait(name, "queries"))
PATCH_OBJECTIVES = tuple(name for name in OBJECTIVES if OBJECTIVES.trait(name, "patch_logits"))
DEFAULT_QUERIES = 1000  # the Square Attack's budget of model queries per restart
