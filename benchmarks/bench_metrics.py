"""Seconds per pixel metric on random float32 anomaly maps with blob masks (one call each).

Usage: PYTHONPATH=src python benchmarks/bench_metrics.py --images 100 --size 224 --seed 0
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from patchguard.evaluation.metrics import aupro, auroc, average_precision, compute_all, f1_max


def blob_data(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Masks with 0-4 elliptical blobs per image, and noisy smooth maps that favour them."""
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for mask in masks:
        for _ in range(rng.integers(0, 5)):
            centre = tuple(int(c) for c in rng.integers(0, size, 2))
            axes = tuple(int(a) for a in rng.integers(2, max(3, size // 8), 2))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    noise = rng.normal(0.0, 1.0, masks.shape).astype(np.float32)
    maps = np.stack([cv2.GaussianBlur(m, (0, 0), 2.0) for m in noise])
    maps += 0.5 * masks
    return masks.astype(bool), maps


def timed(name: str, fn, *args, **kwargs) -> None:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    shown = value if isinstance(value, dict) else np.round(value, 4)
    print(f"{name:>22}: {elapsed:6.2f} s  -> {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bins", type=int, default=1000, help="thresholds for binned AUPRO")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    masks, maps = blob_data(args.images, args.size, np.random.default_rng(args.seed))
    print(
        f"{args.images} images of {args.size}x{args.size}: {maps.size / 1e6:.1f}M pixels, "
        f"{masks.mean():.1%} anomalous, maps {maps.dtype}"
    )
    timed("pixel AUROC", auroc, masks, maps)
    timed("pixel AP", average_precision, masks, maps)
    timed("pixel F1-max", f1_max, masks, maps)
    timed("AUPRO exact", aupro, masks, maps)
    timed(f"AUPRO {args.bins} bins", aupro, masks, maps, num_thresholds=args.bins)
    image_labels = masks.any(axis=(1, 2))
    image_scores = maps.max(axis=(1, 2))
    timed("compute_all (exact)", compute_all, image_labels, image_scores, masks, maps)


if __name__ == "__main__":
    main()
