"""Training: the losses, the optimiser and schedule, resumable checkpoints, data-parallel helpers,
the options beyond the paper's PGD (``robust``: epsilon schedule, carried perturbations, frozen
blocks), the catastrophic-overfitting ``probe``, and the adversarial training loop itself.

``losses``, ``optim``, ``checkpoints``, ``distributed``, ``robust`` and ``probe`` < ``trainer``.
Training sits above evaluation and inference: it scores held-out images and sets decision
thresholds at its end.
"""
