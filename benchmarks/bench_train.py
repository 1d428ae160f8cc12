"""Training and attack throughput, side by side with a naive reference; printed, not asserted.

The naive reference is what a straightforward implementation does: fp32, eager (materialised)
attention in every block, pseudo anomalies made in the training loop's process. Each speed-up
is a ratio taken in the same run.

Example:
    python benchmarks/bench_train.py --image-size 112 --batch-size 8 --steps 3 \\
        --feature-layers 6 --reg-layers 2 4 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from patchguard.adversarial.pgd import pgd_attack
from patchguard.config import TrainConfig
from patchguard.data.datasets import to_tensor
from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator, min_patch_size
from patchguard.models.patchguard import PatchGuard
from patchguard.training.optim import build_optimizer
from patchguard.training.trainer import training_step
from patchguard.utils.device import resolve_device


class SyntheticTrainSet(Dataset):
    """Random textures with pseudo anomalies made on access, like the real training set."""

    def __init__(self, n: int, size: int) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        self.generator = PseudoAnomalyGenerator(min_patch_size("mvtec", "bottle", size))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        pseudo, mask = self.generator(self.images[index], None, rng)
        return {"image": to_tensor(self.images[index]), "pseudo_image": to_tensor(pseudo),
                "pseudo_mask": torch.from_numpy(mask)[None], "index": index}


def eager_everywhere(model: PatchGuard) -> None:
    """Switch every block to timm's materialised attention (the naive reference)."""
    for block in model.feature_extractor.pretrained_model.blocks:
        block.attn.fused_attn = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (train and attack)")
    parser.add_argument("--feature-layers", type=int, nargs="+", default=[12])
    parser.add_argument("--reg-layers", type=int, nargs="+", default=[6, 9, 12])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (optimised)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="0 skips the warm-up call")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    coefficients = ([0.005, 0.01, 0.05][-len(args.reg_layers):] if len(args.reg_layers) <= 3
                    else [0.01] * len(args.reg_layers))
    print(f"config: {args.backbone} {args.image_size}px batch {args.batch_size} PGD-{args.steps} "
          f"feature layers {args.feature_layers} on {device}, torch threads "
          f"{torch.get_num_threads()}")

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()  # first calls allocate memory and pick kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.iters

    generator = PseudoAnomalyGenerator(min_patch_size("mvtec", "bottle", args.image_size))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, args.image_size, args.image_size, 3), dtype=np.uint8)
    started = time.perf_counter()
    for image in images:
        generator(image, None, rng)
    print(f"pseudo anomalies:            {len(images) / (time.perf_counter() - started):8.1f} "
          "img/s per process")

    results = {}
    variants = [("optimised", False)] + ([] if args.no_naive else [("naive", True)])
    for name, naive in variants:
        bf16 = args.bf16 and not naive
        config = TrainConfig(backbone=args.backbone, image_size=args.image_size,
                             pretrained=False, batch_size=args.batch_size,
                             steps_train=args.steps, feature_layers=args.feature_layers,
                             reg_layers=args.reg_layers, reg_coefficients=coefficients,
                             bf16=bf16, device=str(device))
        torch.manual_seed(0)
        model = PatchGuard.from_config(config).to(device).train()
        if naive:
            eager_everywhere(model)
        elif args.compile:
            model.feature_extractor.pretrained_model = torch.compile(
                model.feature_extractor.pretrained_model)
        optimizer = build_optimizer(model, config)
        dataset = SyntheticTrainSet(args.batch_size * (args.iters + args.warmup), args.image_size)
        workers = 0 if naive else args.workers
        # Training through the real loader: the time spent waiting for batches is measured.
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=workers,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        wait = step_time = 0.0
        count = 0
        iterator = iter(loader)
        for i in range(args.iters + args.warmup):
            t0 = time.perf_counter()
            batch = next(iterator)
            t1 = time.perf_counter()
            training_step(model, batch, optimizer, config, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i >= args.warmup:
                wait += t1 - t0
                step_time += t2 - t1
                count += 1
        adv_rate = args.batch_size * count / (wait + step_time)
        config.adv_train = False
        plain = timed(lambda: training_step(model, batch, optimizer, config, device))
        model.eval()
        x = batch["image"].to(device)
        targets = torch.zeros(args.batch_size, model.grid_size**2, device=device)
        attack = timed(lambda: pgd_attack(model, x, targets, 8 / 255, args.steps))
        infer = timed(lambda: model.predict(x))
        results[name] = (adv_rate, args.batch_size / plain, args.batch_size / attack,
                         args.batch_size / infer)
        print(f"[{name}] adversarial training {adv_rate:8.2f} img/s (waiting for data "
              f"{100 * wait / (wait + step_time):4.1f}% of the time, {workers} workers)")
        print(f"[{name}] training without attack {args.batch_size / plain:8.2f} img/s")
        print(f"[{name}] evaluation attack PGD-{args.steps} {args.batch_size / attack:8.2f} img/s")
        print(f"[{name}] clean inference {args.batch_size / infer:8.2f} img/s")
    if "naive" in results:
        ratios = [o / n for o, n in zip(results["optimised"], results["naive"])]
        print("speed-up over naive: adversarial training x{:.2f}, plain training x{:.2f}, "
              "attack x{:.2f}, inference x{:.2f}".format(*ratios))


if __name__ == "__main__":
    main()
