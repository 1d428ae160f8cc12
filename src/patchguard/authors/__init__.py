"""The original authors' published per-class checkpoints: where they are (``index``, the Google
Drive ids), downloading and importing them into patchguard checkpoints (``checkpoints``), and the
conversion of their state-dict format to patchguard's model (``convert``).

Not to be confused with the pretrained *backbone* weights, which
:mod:`patchguard.models.backbone_weights` resolves.
"""
