"""Throughput of adversarial training and of the evaluation attack, printed (not asserted).

Example:
    python benchmarks/bench_train.py --image-size 112 --batch-size 16 --steps 3 --iters 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from patchguard.attacks import pgd_attack
from patchguard.config import TrainConfig
from patchguard.model import PatchGuard
from patchguard.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size
from patchguard.training import build_optimizer, resolve_device, training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (train and attack)")
    parser.add_argument("--feature-layers", type=int, nargs="+", default=[12])
    parser.add_argument("--reg-layers", type=int, nargs="+", default=[6, 9, 12])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="0 skips the warm-up call")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    coefficients = [0.005, 0.01, 0.05][-len(args.reg_layers):] if len(args.reg_layers) <= 3 \
        else [0.01] * len(args.reg_layers)
    config = TrainConfig(backbone=args.backbone, image_size=args.image_size, pretrained=False,
                         batch_size=args.batch_size, steps_train=args.steps,
                         feature_layers=args.feature_layers, reg_layers=args.reg_layers,
                         reg_coefficients=coefficients, bf16=args.bf16, device=str(device))
    print(f"config: {args.backbone} {args.image_size}px batch {args.batch_size} "
          f"PGD-{args.steps} feature layers {args.feature_layers} on {device}"
          f"{' bf16' if args.bf16 else ''}, torch threads {torch.get_num_threads()}")

    # pseudo anomalies, one process
    rng = np.random.default_rng(0)
    generator = PseudoAnomalyGenerator(min_patch_size("mvtec", "bottle", args.image_size))
    images = rng.integers(0, 255, (32, args.image_size, args.image_size, 3), dtype=np.uint8)
    started = time.perf_counter()
    for image in images:
        generator(image, None, rng)
    print(f"pseudo anomalies:        {len(images) / (time.perf_counter() - started):8.1f} img/s "
          "(one process)")

    model = PatchGuard.from_config(config).to(device).train()
    optimizer = build_optimizer(model, config)
    batch = {
        "image": torch.rand(args.batch_size, 3, args.image_size, args.image_size),
        "pseudo_image": torch.rand(args.batch_size, 3, args.image_size, args.image_size),
        "pseudo_mask": (torch.rand(args.batch_size, 1, args.image_size, args.image_size) > 0.9)
        .float(),
    }

    def timed(fn) -> float:
        if args.warmup:
            fn()  # warm-up: first calls allocate and pick kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.iters

    for adv in (True, False):
        config.adv_train = adv
        seconds = timed(lambda: training_step(model, batch, optimizer, config, device))
        label = f"PGD-{args.steps} adversarial" if adv else "no-adv (2 views)"
        print(f"training, {label:<18} {args.batch_size / seconds:8.2f} img/s "
              f"({seconds:.2f} s/batch)")
    model.eval()
    x = batch["image"].to(device)
    targets = torch.zeros(args.batch_size, model.grid_size**2, device=device)
    seconds = timed(lambda: pgd_attack(model, x, targets, 8 / 255, args.steps))
    print(f"evaluation attack PGD-{args.steps}:  {args.batch_size / seconds:8.2f} img/s")
    seconds = timed(lambda: model.predict(x))
    print(f"clean inference:         {args.batch_size / seconds:8.2f} img/s")


if __name__ == "__main__":
    main()
