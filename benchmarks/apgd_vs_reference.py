"""Our APGD against torchattacks' APGD and the paper's PGD, at several step counts.

The per-image ``score`` objective (+score for normal images, -score for anomalous; higher =
stronger attack), mean over images, after each attack at the same epsilon and budget.
torchattacks attacks the image score wrapped as two-class logits [-s, s] (its cross-entropy is
increasing in our objective, image by image). Needs torchattacks (``pip install --no-deps
torchattacks==3.5.1``). On a checkpoint: its test set, ``--images`` of them (half normal, half
anomalous, evenly spaced). Without one: the tiny random test ViT on random images.

    OMP_NUM_THREADS=1 taskset -c 1 env PYTHONPATH=src python benchmarks/apgd_vs_reference.py \\
        --checkpoint runs/gravel/last.pt --images 16 --steps 10 20 30 --seeds 1
"""

from __future__ import annotations

import argparse

import torch

from patchguard.adversarial.attacks import run_attack
from patchguard.adversarial.problem import AttackBudget, AttackProblem


class TwoClass(torch.nn.Module):
    """Image score s as two-class logits [-s, s] (class 1 = anomalous)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2)."""
        s = self.model.image_score(self.model(x, with_attention=False).logits)
        return torch.stack([-s, s], dim=1)


def score_objective(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor
                    ) -> torch.Tensor:
    """The per-image score objective at ``x``."""
    with torch.no_grad():
        s = model.image_score(model(x, with_attention=False).logits)
    return (1 - 2 * labels.float()) * s


def load(checkpoint: str | None, images: int) -> tuple[torch.nn.Module, torch.Tensor,
                                                        torch.Tensor]:
    """Model, images and labels: a checkpoint's test set, or random ones."""
    if checkpoint is None:
        from patchguard.models.patchguard import PatchGuard

        torch.manual_seed(0)
        model = PatchGuard("test_vit", image_size=64, feature_layers=[3], reg_layers=[2, 3],
                           dsc_hidden=32)
        x = torch.rand(images, 3, 64, 64)
        labels = torch.tensor([1, 0] * (images // 2))
        return model.eval(), x, labels
    from patchguard.evaluation.evaluator import load_for_evaluation

    target = load_for_evaluation(checkpoint, device="cpu")
    records = target.test_set.records
    keep = []
    for label in (0, 1):
        indices = [i for i, r in enumerate(records) if r.label == label]
        step = max(len(indices) / (images // 2), 1.0)
        keep += [indices[int(i * step)] for i in range(min(images // 2, len(indices)))]
    x = torch.stack([target.test_set[i]["image"] for i in keep])
    labels = torch.tensor([records[i].label for i in keep])
    return target.model.eval(), x, labels


def main() -> None:
    """Print the mean objective of PGD, our APGD and torchattacks' APGD per step count."""
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epsilon", type=float, default=8.0, help="in 1/255")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, labels = load(args.checkpoint, args.images)
    eps = args.epsilon / 255
    grid = model.image_size // model.patch_size
    targets = labels[:, None].float().expand(len(x), grid * grid).clone()
    print(f"{args.checkpoint or 'random test_vit'}: {len(x)} images, eps {args.epsilon:g}/255, "
          f"clean objective {score_objective(model, x, labels).mean():.4f}")
    for steps in args.steps:
        sums = {"pgd": 0.0, "apgd": 0.0, "torchattacks": 0.0}
        for seed in range(args.seeds):
            for attack in ("pgd", "apgd"):
                problem = AttackProblem(model, x, targets, labels, eps, "score", None)
                loss = run_attack(attack, problem, AttackBudget(
                    steps=steps, generator=torch.Generator().manual_seed(seed)))[1]
                sums[attack] += loss.mean().item() / args.seeds
            reference = torchattacks.APGD(TwoClass(model), eps=eps, steps=steps, n_restarts=1,
                                          seed=seed, loss="ce")
            _, adv = reference.perturb(x, labels, best_loss=True)
            sums["torchattacks"] += score_objective(model, adv, labels).mean().item() / args.seeds
        print(f"steps {steps:4d}  " + "  ".join(f"{k} {v:.4f}" for k, v in sums.items()),
              flush=True)


if __name__ == "__main__":
    main()
