"""The network: the ViT backbone, the PatchGuard detector, its pretrained backbone weights.

``backbone`` (feature extractor and attention capture) < ``patchguard`` (discriminator, scores,
maps) < ``factory`` (build from a config or a checkpoint); ``backbone_weights`` resolves the
pretrained weights of the backbone (timm / Hugging Face Hub, a local file, the offline DINOv2
fallback). The original authors' trained checkpoints are another thing: :mod:`patchguard.authors`.
"""
