"""Adversarial attacks: objectives, the PGD loop shared by training and evaluation, and the
evaluation attacks.

``attackable`` (what is attacked: any differentiable detector) < ``objectives`` < ``ascent``
(the one PGD loop, docs/method.md section 4) < ``training_attacks`` (the training-time attacks
on it) and ``problem``
(shared machinery) < ``early_stop`` < ``apgd`` / ``gradient`` / ``square`` < ``standard`` <
``attacks`` (their registry is :data:`.names.ATTACKS`) and ``settings`` (the one
:class:`.settings.AttackSettings` value an evaluation runs under).
"""
