"""Adversarial attacks: objectives, the faithful training-time PGD, and the evaluation attacks.

``objectives`` < ``pgd`` (docs/method.md, section 4, for training and as the paper's attack) <
``problem`` (shared machinery) < ``apgd`` < ``attacks`` (the registry :data:`.attacks.ATTACKS`).
"""
