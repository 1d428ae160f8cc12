"""Training: the losses, the optimiser and schedule, resumable checkpoints, data-parallel helpers
and the adversarial training loop itself.

``losses``, ``optim``, ``checkpoints`` and ``distributed`` < ``trainer``. Training sits above
evaluation and inference: it scores held-out images and sets decision thresholds at its end.
"""
