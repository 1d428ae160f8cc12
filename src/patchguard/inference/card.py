"""The model card: a checkpoint's model, data, weights, thresholds and results in a few lines.

Evaluation results live beside the checkpoint in a small sidecar file (``last.pt`` ->
``last.results.json``), so that recording a test never rewrites a multi-hundred-megabyte
checkpoint. The sidecar carries a fingerprint of the model's weights: results of another
version of the file (retrained, resumed) are shown as such, never as this model's. Results
stored inside checkpoints by older versions (key ``results``) are still read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..utils.checkpoint import model_fingerprint
from ..utils.files import atomic_write_text
from .thresholds import few_normals_note

SIDECAR_SUFFIX = ".results.json"


def results_path(checkpoint: str | Path) -> Path:
    """A checkpoint's results sidecar: ``last.pt`` -> ``last.results.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SIDECAR_SUFFIX)


def write_results_sidecar(checkpoint: str | Path, state: dict[str, Any],
                          rows: list[dict[str, Any]]) -> Path:
    """Record evaluation rows for the model in ``state`` beside its checkpoint (atomically)."""
    payload = {
        "checkpoint": Path(checkpoint).name,
        "model_fingerprint": model_fingerprint(state["model"]),
        "epoch": state.get("epoch"),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": rows,
    }
    return atomic_write_text(results_path(checkpoint), json.dumps(payload, indent=2) + "\n")


def read_results(checkpoint: str | Path, state: dict[str, Any]) -> tuple[list[dict], str]:
    """The recorded results of this model: (rows, note); the note says where they come from.

    The sidecar's rows count only when its fingerprint matches the weights in ``state``;
    otherwise the note says they belong to another version of the file. Without a sidecar,
    rows stored inside the checkpoint by older versions are returned.
    """
    path = results_path(checkpoint)
    if path.is_file():
        try:
            payload = json.loads(path.read_text())
            rows = payload["results"]
        except (OSError, ValueError, KeyError, TypeError):
            return [], f"{path.name} is unreadable; rerun 'patchguard test'"
        if payload.get("model_fingerprint") == model_fingerprint(state["model"]):
            return rows, f"from {path.name}"
        return [], (f"{path.name} holds results of another version of this file (epoch "
                    f"{payload.get('epoch')}); rerun 'patchguard test'")
    rows = list(state.get("results") or [])
    if not rows:
        return [], "none recorded (run 'patchguard test' on this checkpoint)"
    return rows, "stored in the checkpoint"


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
        if thresholds.get("n_normal"):
            method = f"{method}, from {thresholds['n_normal']} normal image(s)"
        add("threshold method", method)
        if thresholds.get("n_normal") and thresholds.get("target_fpr"):
            add("threshold note", few_normals_note(int(thresholds["n_normal"]),
                                                   float(thresholds["target_fpr"])))
    else:
        add("thresholds", "none (run 'patchguard calibrate')")
    normal = checkpoint.get("normal_scores")
    if isinstance(normal, torch.Tensor) and normal.numel():
        add("normal scores", f"{normal.numel()} images, mean {float(normal.mean()):.4f}, "
            f"max {float(normal.max()):.4f}")
    results = checkpoint.get("results") or []
    note = checkpoint.get("results_note")
    if note and not results:
        add("evaluation results", note)
    if results:
        lines.append(f"  evaluation results ({note}):" if note else "  evaluation results:")
        for row in results:
            pixel = row.get("pixel_auroc")
            pixel_text = "n/a" if pixel is None else f"{pixel:.4f}"
            lines.append(f"    {row.get('attack', 'clean')} eps {row.get('epsilon', 0):g} "
                         f"steps {row.get('steps', 0)}: image AUROC "
                         f"{row.get('image_auroc', float('nan')):.4f}, pixel AUROC {pixel_text}")
    return "\n".join(lines)
