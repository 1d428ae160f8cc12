"""Where one ``standard`` evaluation spends its time: CPU seconds and model passes per member.

It evaluates a checkpoint on ``--images`` demo test images (normal and anomalous alternating,
with their pixel masks unless ``--no-masks``), clean and ``standard`` at ``--epsilon``, and
prints per member the CPU seconds and images sent through the model, then the batch-size
scaling of one forward and one input-gradient pass (ms per image at batch 1 to 16, medians of
three rounds) and whether a sub-batch gives each image the same bits as the whole batch.

    OMP_NUM_THREADS=1 taskset -c 0 env PYTHONPATH=src python benchmarks/profile_standard.py \\
        --checkpoint RUN/last.pt --data DEMO_ROOT --class-name grass --members demo
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from patchguard.adversarial import standard
from patchguard.adversarial.settings import AttackSettings
from patchguard.data.datasets import TensorTestSet, load_test_set
from patchguard.evaluation.evaluator import evaluate
from patchguard.models.factory import load_model


def _members_profile(model, data, members, eps: float, batch_size: int) -> None:
    original = standard._run_member
    spent: dict[str, list[float]] = {}

    def timed(problem, budget, member):
        started, passes = time.process_time(), problem.passes[0]
        result = original(problem, budget, member)
        spent[member.describe()] = [time.process_time() - started, problem.passes[0] - passes]
        return result

    standard._run_member = timed
    try:
        settings = AttackSettings(attacks=("standard",), epsilons=(0, eps),
                                  standard_members=members, batch_size=batch_size)
        started = time.process_time()
        rows = evaluate(model, data, settings, progress=False)
        total = time.process_time() - started
    finally:
        standard._run_member = original
    print(f"standard at {eps:g}/255 on {len(data)} images: {total:.1f} CPU s in all "
          f"(clean pass included), {rows[1]['passes_per_image']} passes per image, image AUROC "
          f"{rows[1]['image_auroc']:.3f}, pixel AUROC {rows[1]['pixel_auroc']}")
    for name, (seconds, passes) in spent.items():
        print(f"  {name:<28} {seconds:7.2f} CPU s ({seconds / total:5.1%})  {passes:6d} images "
              f"through the model")


def _batch_scaling(model, size: int) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(0)
    x = torch.rand(16, 3, size, size)

    def forward(z):
        with torch.no_grad():
            return model(z, with_attention=False).logits

    def gradient(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(model(z, with_attention=False).logits.sum(), z)[0]

    timings: dict[int, list[tuple[float, float]]] = {}
    for _ in range(3):
        for batch in (1, 2, 4, 8, 16):
            part = x[:batch]
            forward(part)
            pair = []
            for function, repeats in ((forward, max(1, 16 // batch)),
                                      (gradient, max(1, 8 // batch))):
                started = time.process_time()
                for _ in range(repeats):
                    function(part)
                pair.append(1000 * (time.process_time() - started) / (repeats * batch))
            timings.setdefault(batch, []).append(tuple(pair))
    full_f, full_g = forward(x), gradient(x)
    print("batch  forward ms/image  input-gradient ms/image  same bits as in a batch of 16")
    for batch, values in timings.items():
        same = (torch.equal(forward(x[:batch]), full_f[:batch])
                and torch.equal(gradient(x[:batch]), full_g[:batch]))
        print(f"{batch:5d}  {statistics.median(v[0] for v in values):16.1f}  "
              f"{statistics.median(v[1] for v in values):23.1f}  {same}")


def main() -> None:
    """Profile one standard evaluation per member, then the batch-size scaling."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a demo (MVTec-layout) data folder")
    parser.add_argument("--class-name", default="grass")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--members", choices=["standard", "demo"], default="demo")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-masks", action="store_true")
    args = parser.parse_args()
    logging.getLogger("patchguard").setLevel(logging.ERROR)
    model, _ = load_model(Path(args.checkpoint), torch.device("cpu"))
    size = model.image_size
    full = load_test_set("mvtec", Path(args.data), args.class_name, size)
    normal = [i for i, r in enumerate(full.records) if r.label == 0]
    anomalous = [i for i, r in enumerate(full.records) if r.label == 1]
    samples = [full[i] for pair in zip(normal, anomalous) for i in pair][:args.images]
    data = TensorTestSet(torch.stack([s["image"] for s in samples]),
                         torch.tensor([int(s["label"]) for s in samples]),
                         None if args.no_masks else torch.stack([s["mask"][0] for s in samples]))
    members = standard.STANDARD_MEMBERS
    if args.members == "demo":
        from patchguard.demo.run import DEMO_STANDARD

        members = DEMO_STANDARD["members"]
    _members_profile(model, data, members, args.epsilon, args.batch_size)
    _batch_scaling(model, size)


if __name__ == "__main__":
    main()
