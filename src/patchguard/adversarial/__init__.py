"""Adversarial attacks: objectives, the PGD loop shared by training and evaluation, and the
evaluation attacks.

``objectives`` < ``pgd`` (the one PGD loop, and the training-time attacks on it) <
``problem`` (shared machinery) < ``early_stop`` < ``apgd`` / ``gradient`` / ``square`` <
``standard`` < ``attacks`` (the registry :data:`.attacks.ATTACKS`) and ``settings`` (the one
:class:`.settings.AttackSettings` value an evaluation runs under).
"""
