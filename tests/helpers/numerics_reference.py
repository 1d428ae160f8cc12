"""Per-step training losses of a fixed tiny setting, for tests/training/test_numerics.py.

The stored losses are tests/fixtures/training_losses_reference.json.

Runs on the flat layout of commit a0df06f (the code before the speed work) and on today's
packages, so the stored reference comes from the old code and the test from the new:

    git worktree add /tmp/pg-a0df06f a0df06f
    PYTHONPATH=/tmp/pg-a0df06f/src OMP_NUM_THREADS=1 python3 tests/helpers/numerics_reference.py

It prints a JSON object {case: [[total, reg, clean, adv_clean, pseudo, adv_pseudo], ...]}.
"""

from __future__ import annotations

import json

import torch

# The tiny setting: timm's test ViT at 64 px (4 x 4 patches), no dropout (see the test).
SETTING = dict(backbone="test_vit", image_size=64, pretrained=False, feature_layers=[3],
               reg_layers=[2, 3], reg_coefficients=[0.01, 0.05], dsc_hidden=64, batch_size=4,
               steps_train=2, epsilon_train=8.0, dsc_dropout=0.0, device="cpu", seed=0)
# case: (lr, steps). One step at the paper's lr; three at a small lr, which does not amplify
# float noise the way Adam's first steps from random initialisation at 8e-4 do.
CASES = {"paper_lr_step1": (8e-4, 1), "small_lr_3_steps": (1e-5, 3)}
VIEWS = ("clean", "adv_clean", "pseudo", "adv_pseudo")


def synthetic_batch(size: int = 64, n: int = 4) -> dict[str, torch.Tensor]:
    """Images from a seeded generator, and pseudo views with a pasted square (independent of
    the pseudo-anomaly code, so only the training step is compared)."""
    gen = torch.Generator().manual_seed(1234)
    images = torch.rand(n, 3, size, size, generator=gen)
    masks = torch.zeros(n, 1, size, size)
    pseudo = images.clone()
    for i in range(n):
        y, x = (int(v) for v in torch.randint(0, size - 24, (2,), generator=gen))
        masks[i, :, y : y + 20, x : x + 20] = 1.0
        pseudo[i, :, y : y + 20, x : x + 20] = torch.rand(3, 1, 1, generator=gen)
    return {"image": images, "pseudo_image": pseudo, "pseudo_mask": masks,
            "index": torch.arange(n)}


def run_case(lr: float, steps: int) -> list[list[float]]:
    """Losses of ``steps`` training steps on the synthetic batch, from seed 0."""
    from patchguard.config import TrainConfig

    try:  # today's packages
        from patchguard.models.patchguard import PatchGuard
        from patchguard.training.optim import build_optimizer
        from patchguard.training.task import training_step
    except ImportError:  # the flat layout of a0df06f
        from patchguard.model import PatchGuard
        from patchguard.training import build_optimizer, training_step

    config = TrainConfig(lr=lr, **SETTING)
    torch.manual_seed(0)
    model = PatchGuard.from_config(config).train()
    optimizer = build_optimizer(model, config)
    batch = synthetic_batch()
    losses = []
    for _ in range(steps):
        result = training_step(model, batch, optimizer, config, torch.device("cpu"))
        losses.append([result.total, result.reg, *(result.views[v] for v in VIEWS)])
    return losses


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps({name: run_case(*case) for name, case in CASES.items()}))
