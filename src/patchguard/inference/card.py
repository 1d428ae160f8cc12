"""The model card: a checkpoint's model, data, weights, thresholds and results in a few lines."""

from __future__ import annotations

from typing import Any

import torch


def model_card(checkpoint: dict[str, Any]) -> str:
    """Human-readable summary of a checkpoint dict: model, data, weights, thresholds, results."""
    config = checkpoint.get("config", {})
    lines = ["PatchGuard checkpoint"]

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            lines.append(f"  {label:<20} {value}")

    add("patchguard version", checkpoint.get("patchguard_version"))
    add("imported from", checkpoint.get("imported_from"))
    add("backbone", config.get("backbone"))
    add("weight source", checkpoint.get("weight_source"))
    add("image size", config.get("image_size"))
    add("feature layers", config.get("feature_layers"))
    add("discriminator", f"{config.get('dsc_layers')} block(s), {config.get('dsc_heads')} heads,"
        f" hidden {config.get('dsc_hidden')}" if config else None)
    model = checkpoint.get("model")
    if isinstance(model, dict):
        params = sum(t.numel() for t in model.values() if isinstance(t, torch.Tensor))
        add("parameters", f"{params / 1e6:.2f} M")
    add("epochs completed", checkpoint.get("epoch"))
    if config:
        adv = (f"PGD eps {config.get('epsilon_train')}/255, {config.get('steps_train')} steps"
               if config.get("adv_train") else "off")
        add("adversarial train", adv)
        add("attention reg.", f"layers {config.get('reg_layers')} coefficients "
            f"{config.get('reg_coefficients')}" if config.get("reg") else "off")
        add("preset", config.get("preset"))
    summary = checkpoint.get("train_summary") or {}
    labels = {"dataset": "dataset", "class_name": "class", "n_train_images": "training images",
              "foreground_masks": "foreground masks"}
    for key, value in summary.items():
        add(labels.get(key, key.replace("_", " ")), value)
    thresholds = checkpoint.get("thresholds")
    if thresholds:
        add("image threshold", thresholds.get("image"))
        add("pixel threshold", thresholds.get("pixel"))
        method = thresholds.get("method")
        if thresholds.get("target_fpr") is not None:
            method = f"{method} (target FPR {thresholds['target_fpr']})"
        add("threshold method", method)
    else:
        add("thresholds", "none (run 'patchguard calibrate')")
    normal = checkpoint.get("normal_scores")
    if isinstance(normal, torch.Tensor) and normal.numel():
        add("normal scores", f"{normal.numel()} images, mean {float(normal.mean()):.4f}, "
            f"max {float(normal.max()):.4f}")
    results = checkpoint.get("results") or []
    if results:
        lines.append("  evaluation results:")
        for row in results:
            pixel = row.get("pixel_auroc")
            pixel_text = "n/a" if pixel is None else f"{pixel:.4f}"
            lines.append(f"    {row.get('attack', 'clean')} eps {row.get('epsilon', 0):g} "
                         f"steps {row.get('steps', 0)}: image AUROC "
                         f"{row.get('image_auroc', float('nan')):.4f}, pixel AUROC {pixel_text}")
    return "\n".join(lines)
