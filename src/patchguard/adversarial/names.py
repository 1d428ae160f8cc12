"""Names of the evaluation attacks and objectives, importable without torch.

The command line builds its choices from here so that ``patchguard --help`` does not import
torch. They equal the keys of the registries :data:`.attacks.ATTACKS` and
:data:`.objectives.OBJECTIVES`, which stay the source of truth (a test checks that they match).
"""

from __future__ import annotations

ATTACK_NAMES = ("pgd", "pgd-rs", "fgsm", "apgd", "worst", "square", "standard")
OBJECTIVE_NAMES = ("mask", "score", "map")
# Attacks that search without gradients and count model queries instead of steps.
QUERY_ATTACKS = ("square",)
DEFAULT_QUERIES = 1000  # the Square Attack's budget of model queries per restart
