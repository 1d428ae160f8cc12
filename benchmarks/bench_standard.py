"""Cost of the ``standard`` evaluation (images/s) per epsilon, and of each of its members.

A randomly initialised model (no download); the cost of an attack does not depend on the
weights. Default: the fast preset's ViT-S/14 at 112 px, feature layer 6, regularised 2 4 6, one
batch. Also in units of a clean scoring pass of the same batch, which carries across machines.
``--members demo`` times the demo's bounded members instead (patchguard.demo.run).

    OMP_NUM_THREADS=1 taskset -c 1 env PYTHONPATH=src python benchmarks/bench_standard.py \\
        --images 2 --epsilons 8 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from patchguard.adversarial.problem import AttackBudget, AttackProblem
from patchguard.adversarial.standard import (
    STANDARD_MEMBERS,
    attack_standard_per_metric,
    member_candidates,
)
from patchguard.models.patchguard import PatchGuard


def main() -> None:
    """Time the whole of ``standard`` (and with --each, each member alone); print images/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--feature-layers", type=int, nargs="+", default=[6])
    parser.add_argument("--reg-layers", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--images", type=int, default=4, help="one batch of this many images")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8], help="in 1/255")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--members", choices=["standard", "demo"], default="standard")
    parser.add_argument("--each", action="store_true", help="also time each member alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    members = STANDARD_MEMBERS
    if args.members == "demo":
        from patchguard.demo.run import DEMO_STANDARD

        members = DEMO_STANDARD["members"]
    model = PatchGuard(args.backbone, image_size=args.image_size,
                       feature_layers=args.feature_layers, reg_layers=args.reg_layers).eval()
    n, size = args.images, args.image_size
    x = torch.rand(n, 3, size, size)
    labels = torch.zeros(n)
    labels[: n // 2] = 1
    masks = torch.zeros(n, 1, size, size)
    masks[: n // 2, :, size // 4: size // 2, size // 4: size // 2] = 1
    grid = size // model.patch_size
    targets = (torch.nn.functional.adaptive_max_pool2d(masks, grid).flatten(1) > 0).float()
    print(f"{args.backbone} {size} px, feature layers {args.feature_layers}, reg layers "
          f"{args.reg_layers}, {n} images, {args.threads} thread(s), members "
          f"{', '.join(m.describe() for m in members)}")

    def clean_seconds() -> float:
        """Median time of one clean scoring pass over the batch (5 runs)."""
        times = []
        for _ in range(5):
            started = time.perf_counter()
            model.predict(x)
            times.append(time.perf_counter() - started)
        return sorted(times)[2]

    for eps in args.epsilons:
        problem = AttackProblem(model, x, targets, labels, eps / 255, "score", masks)
        before = clean_seconds()
        if args.each:
            for member in members:
                started = time.perf_counter()
                member_candidates(problem, AttackBudget(generator=torch.Generator()
                                                        .manual_seed(0)), (member,))
                seconds = time.perf_counter() - started
                print(f"eps {eps:g}/255  {member.describe():<28} {seconds:8.1f} s  "
                      f"{n / seconds:.4f} img/s", flush=True)
        started = time.perf_counter()
        result = attack_standard_per_metric(
            problem, AttackBudget(generator=torch.Generator().manual_seed(0)), members)
        model.predict(result.image)
        model.predict(result.pixel)
        seconds = time.perf_counter() - started
        clean = (before + clean_seconds()) / 2  # the clean pass on either side, for the load
        print(f"eps {eps:g}/255  standard (attack + scoring)    {seconds:8.1f} s  "
              f"{n / seconds:.4f} img/s  {seconds / n:.1f} s/image  = {seconds / clean:.0f} "
              f"clean passes (clean {n / clean:.1f} img/s); image worst from "
              f"{result.image_member.tolist()}, pixel worst from {result.pixel_member.tolist()}",
              flush=True)


if __name__ == "__main__":
    main()
