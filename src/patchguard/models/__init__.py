"""The network: the ViT backbone, the PatchGuard detector, pretrained weights, and the import of
the original authors' checkpoints.

``backbone`` (feature extractor and attention capture) < ``patchguard`` (discriminator, scores,
maps) < ``factory`` (build from a config or a checkpoint); ``weights`` resolves pretrained
backbone weights; ``original`` converts the authors' state dicts.
"""
