"""Throughput of the foreground-aware pseudo-anomaly generator (images per second, one core).

Usage: PYTHONPATH=src python benchmarks/bench_pseudo_anomaly.py --image-size 224 --n 200 --seed 0
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size


def textured_images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for _ in range(n):
        fx, fy = rng.uniform(0.05, 0.4, 2)
        base = 127 + 60 * np.sin(xx * fx)[..., None] * np.cos(yy * fy)[..., None]
        noise = cv2.GaussianBlur(rng.normal(0, 40, (size, size, 3)).astype(np.float32), (0, 0), 1.5)
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return images


def run(name: str, gen, images, foreground, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gen(images[0], foreground, rng)  # warm-up (imports, OpenCV/Pillow first-call costs)
    start = time.perf_counter()
    pixels = 0
    for image in images:
        _, mask = gen(image, foreground, rng)
        pixels += int(mask.sum())
    elapsed = time.perf_counter() - start
    print(
        f"{name:>16}: {len(images) / elapsed:8.1f} images/s "
        f"({1e3 * elapsed / len(images):.2f} ms/image, mean mask {pixels / len(images):.0f} px)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cv2.setNumThreads(1)  # measure one core, as inside a DataLoader worker
    size = args.image_size
    images = textured_images(args.n, size, np.random.default_rng(args.seed))
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.3 * size) ** 2
    gen = PseudoAnomalyGenerator(min_patch_size("mvtec", "bottle", size))
    print(f"image size {size}, n {args.n}, min patch side {gen.min_size}")
    run("disc foreground", gen, images, disc, args.seed)
    run("full foreground", gen, images, None, args.seed)


if __name__ == "__main__":
    main()
