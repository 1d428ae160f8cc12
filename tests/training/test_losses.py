import math

import torch
import torch.nn.functional as F

from patchguard.models.patchguard import patch_targets
from patchguard.training.losses import attention_kl_regularizer, patch_bce_loss


def test_patch_targets_any_pixel():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 3, 0] = 1  # one pixel in the bottom-left 2x2 patch
    assert patch_targets(mask, 2).tolist() == [[0, 0, 1, 0]]


def test_bce_sums_patches_and_averages_images():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    by_hand = 0.0
    for row_l, row_t in zip(logits.tolist(), targets.tolist()):
        for s, m in zip(row_l, row_t):
            p = 1 / (1 + math.exp(-s))
            by_hand -= m * math.log(p) + (1 - m) * math.log(1 - p)
    assert abs(patch_bce_loss(logits, targets).item() - by_hand / 2) < 1e-6


def test_regulariser_equals_original_kl_div_mean():
    torch.manual_seed(0)
    attentions = [torch.rand(2, 3, 5, 5).softmax(-1), torch.rand(2, 3, 5, 5).softmax(-1)]
    coefficients = [0.01, 0.05]
    ours = attention_kl_regularizer(attentions, coefficients)
    uniform = torch.full((2, 3, 5, 5), 1 / 5)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = sum(c * F.kl_div(torch.log(a + 1e-8), uniform, reduction="mean")
                       for a, c in zip(attentions, coefficients))
    assert abs(ours.item() - original.item()) < 1e-6


def test_regulariser_is_minimal_at_uniform_attention():
    uniform = torch.full((1, 1, 4, 4), 0.25)
    peaked = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(4, 4)[None, None]
    assert attention_kl_regularizer([uniform], [1.0]).abs().item() < 1e-6
    assert attention_kl_regularizer([peaked], [1.0]).item() > 0.5
