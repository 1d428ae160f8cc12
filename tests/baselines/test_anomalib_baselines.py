"""anomalib's PatchCore, PaDiM and EfficientAd through the adapters (needs the anomalib extra).

Offline and tiny: random-init ResNet-18 backbones (``pretrained=False``: timm downloads
nothing), EfficientAd's random teacher, 64 px generated classes. Run with
``/work/venvs/anomalib/bin/python -m pytest tests/baselines`` (any Python with anomalib).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

pytest.importorskip("anomalib")

from patchguard.baselines import (  # noqa: E402
    AnomalibDetector,
    load_baseline,
    prepare_baseline,
    save_baseline,
    train_baseline,
)
from patchguard.data.datasets import load_test_set  # noqa: E402

from helpers.data import make_mvtec_class  # noqa: E402

SIZE = 64
EPS = 8 / 255


def _faint_class(root: Path, n_train: int = 12, n_test: int = 8, seed: int = 0) -> Path:
    """An MVTec-layout class with faint (+40 grey levels) defects, so that 8/255 matters.

    conftest's class has saturated (250) defects that no 8/255 perturbation hides. A
    ``train/foreground_mask`` folder is written too: anomalib's MVTecAD datamodule would take
    it for a defect class; the records-based training must ignore it.
    """
    rng = np.random.default_rng(seed)
    cls = root / "faint"
    for sub in ("train/good", "train/foreground_mask", "test/good", "test/spot",
                "ground_truth/spot"):
        (cls / sub).mkdir(parents=True, exist_ok=True)

    def texture() -> np.ndarray:
        base = np.kron(rng.normal(128, 12, (SIZE // 8, SIZE // 8, 3)), np.ones((8, 8, 1)))
        return base + rng.normal(0, 4, base.shape)

    def save(array: np.ndarray, path: str) -> None:
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(cls / path)

    for i in range(n_train):
        save(texture(), f"train/good/{i:03d}.png")
        save(np.full((SIZE, SIZE), 255.0), f"train/foreground_mask/{i:03d}.png")
    for i in range(n_test):
        save(texture(), f"test/good/{i:03d}.png")
        image, mask = texture(), np.zeros((SIZE, SIZE))
        y, x = rng.integers(8, SIZE - 24, 2)
        image[y : y + 16, x : x + 16] += 40
        mask[y : y + 16, x : x + 16] = 255
        save(image, f"test/spot/{i:03d}.png")
        save(mask, f"ground_truth/spot/{i:03d}_mask.png")
    return cls


@pytest.fixture(scope="module")
def faint(tmp_path_factory) -> Path:
    return _faint_class(tmp_path_factory.mktemp("baseline_data"))


@pytest.fixture(scope="module")
def test_images(faint) -> tuple[torch.Tensor, np.ndarray]:
    """The class's test split as patchguard's evaluation loads it: images (N, 3, 64, 64), labels."""
    test_set = load_test_set("mvtec", faint.parent, faint.name, SIZE)
    images = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    labels = np.array([test_set[i]["label"] for i in range(len(test_set))])
    return images, labels


def _train(name: str, class_dir: Path, **kwargs) -> AnomalibDetector:
    torch.set_num_threads(1)
    settings = dict(image_size=SIZE, backbone="resnet18", pretrained=False)
    settings.update(kwargs)
    return train_baseline(name, class_dir, **settings)


@pytest.fixture(scope="module")
def patchcore(faint) -> AnomalibDetector:
    # Coreset selection is where PatchCore's fit can take gigabytes (docs/baselines.md): 12
    # images here.
    return _train("patchcore", faint)


@pytest.fixture(scope="module")
def padim(faint) -> AnomalibDetector:
    return _train("padim", faint)


def _input_gradient(detector, images: torch.Tensor) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    scores, maps = detector(x)
    (grad,) = torch.autograd.grad(scores.sum() + maps.mean(), x)
    return grad


def _check_equals_anomalib(detector: AnomalibDetector, images: torch.Tensor) -> None:
    """The adapter's forward against anomalib's own ``model(x)`` on the same model input."""
    reference_scores, reference_maps = detector.anomalib_outputs(images)
    with torch.no_grad():
        scores, maps = detector.baseline.forward(detector.model, detector.model_input(images))
        outer_scores, outer_maps = detector(images)
    torch.testing.assert_close(scores.reshape(-1), reference_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[:, 0], reference_maps, rtol=1e-5, atol=1e-6)
    # The callable itself: the same scores, maps at the input size.
    torch.testing.assert_close(outer_scores, reference_scores, rtol=1e-5, atol=1e-6)
    assert outer_maps.shape == (len(images), *images.shape[-2:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_adapter_equals_anomalib_and_has_an_input_gradient(name, request, test_images):
    detector = request.getfixturevalue(name)
    images = test_images[0][:6]
    _check_equals_anomalib(detector, images)
    grad = _input_gradient(detector, images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every image, not just one
    # anomalib's own forward has no graph: that is what the adapter is for.
    x = images.clone().requires_grad_(True)
    assert not detector.model(detector.model_input(x)).pred_score.requires_grad
    # Train mode must not change the outputs (PatchCore would append to its embedding store).
    detector.train()
    with torch.no_grad():
        torch.testing.assert_close(detector(images)[0], detector.anomalib_outputs(images)[0])
    detector.eval()


@pytest.mark.slow
def test_clean_scores_separate_the_faint_defects(patchcore, padim, test_images):
    images, labels = test_images
    for detector in (patchcore, padim):
        with torch.no_grad():
            scores, _ = detector(images)
        assert roc_auc_score(labels, scores.numpy()) > 0.8


def _pgd(detector, images, labels, eps=EPS, steps=10):
    """Plain signed-gradient L-inf PGD pushing normal scores up and anomalous ones down."""
    sign = torch.as_tensor(1.0 - 2.0 * labels, dtype=torch.float32)
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((sign * detector(x)[0]).sum(), x)
        x = x.detach() + 2.5 * eps / steps * grad.sign()
        x = (images + (x - images).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


@torch.no_grad()
def _random_search(detector, images, labels, eps=EPS, queries=60, seed=0):
    """Square-like: +-eps stripes, then random +-eps squares kept where the objective rises."""
    gen = torch.Generator().manual_seed(seed)
    sign = torch.as_tensor(1.0 - 2.0 * labels, dtype=torch.float32)
    n, c, h, w = images.shape
    delta = eps * (torch.randint(0, 2, (n, c, 1, w), generator=gen) * 2.0 - 1).expand(n, c, h, w)
    delta = delta.clone()
    best = sign * detector((images + delta).clamp(0, 1))[0]
    for i in range(queries):
        side = max(2, int(round(h * (0.3 * 0.5 ** (4 * i // queries)) ** 0.5)))
        candidate = delta.clone()
        for k in range(n):
            y, x = torch.randint(0, h - side + 1, (2,), generator=gen).tolist()
            value = eps * (torch.randint(0, 2, (c, 1, 1), generator=gen) * 2.0 - 1)
            candidate[k, :, y : y + side, x : x + side] = value
        objective = sign * detector((images + candidate).clamp(0, 1))[0]
        better = objective > best
        delta[better], best[better] = candidate[better], objective[better]
    return (images + delta).clamp(0, 1)


@pytest.mark.slow
def test_pgd_and_random_search_lower_an_undefended_patchcores_auroc(patchcore, test_images):
    images, labels = test_images
    with torch.no_grad():
        clean = roc_auc_score(labels, patchcore(images)[0].numpy())
    attacked = {"pgd": _pgd(patchcore, images, labels),
                "square": _random_search(patchcore, images, labels)}
    for name, adversarial in attacked.items():
        assert (adversarial - images).abs().max() <= EPS + 1e-6, name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name
        with torch.no_grad():
            auroc = roc_auc_score(labels, patchcore(adversarial)[0].numpy())
        drop = 0.3 if name == "pgd" else 0.1  # the gradient-free search is weaker
        assert auroc < clean - drop, (name, clean, auroc)


@pytest.mark.slow
def test_checkpoint_round_trip_gives_the_same_detector(padim, test_images, tmp_path):
    path = save_baseline(padim, tmp_path / "padim.pt")
    loaded, payload = load_baseline(path)
    assert payload["config"]["name"] == "padim" and loaded.settings == padim.settings
    images = test_images[0][:4]
    with torch.no_grad():
        for a, b in zip(loaded(images), padim(images)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    _check_equals_anomalib(loaded, images)


@pytest.mark.slow
def test_prepare_baseline_trains_once_then_reads_back(faint, tmp_path):
    torch.set_num_threads(1)
    options = dict(backbone="resnet18", pretrained=False, image_size=SIZE)
    first = prepare_baseline("padim", "mvtec", faint.parent, faint.name, tmp_path,
                             test_image_size=48, **options)
    assert first.trained_now and first.checkpoint.is_file()
    assert first.checkpoint == tmp_path / "faint" / "baselines" / "padim.pt"
    assert len(first.test_set) == 16 and first.test_set.image_size == 48
    assert first.fields["method"] == "PaDiM" and first.fields["backbone"] == "resnet18"
    again = prepare_baseline("padim", "mvtec", faint.parent, faint.name, tmp_path,
                             test_image_size=48, **options)
    assert not again.trained_now
    images = torch.stack([first.test_set[i]["image"] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(again.detector(images)[0], first.detector(images)[0],
                                   rtol=0, atol=0)
        assert again.detector(images)[1].shape == (4, 48, 48)
    with pytest.raises(ValueError, match="delete it to retrain"):
        prepare_baseline("padim", "mvtec", faint.parent, faint.name, tmp_path,
                         test_image_size=48, **{**options, "seed": 1})


@pytest.mark.slow
def test_training_is_seeded_and_leaves_the_global_rng_alone(faint, padim, test_images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = _train("padim", faint)
    assert torch.equal(torch.rand(3), expected)
    with torch.no_grad():
        torch.testing.assert_close(again(test_images[0][:4])[0], padim(test_images[0][:4])[0],
                                   rtol=0, atol=0)


@pytest.mark.slow
def test_efficient_ad_one_step_equals_anomalib_and_has_an_input_gradient(tmp_path, capfd):
    # EfficientAd needs >= 256 px and batch 1 (~1 s per step on this CPU): the smallest fit,
    # 3 training images, 1 holdout image for the map quantiles, one optimiser step.
    torch.set_num_threads(1)
    cls = make_mvtec_class(tmp_path, n_train=4, n_good=1, n_bad=1, size=64)
    detector = train_baseline("efficient_ad", cls, image_size=256, pretrained=False,
                              max_steps=1, work_dir=tmp_path / "work")
    assert detector.model.is_set(detector.model.quantiles)  # computed though no epoch ended
    err = capfd.readouterr().err
    assert "Calculate teacher channel" not in err and "GPU available" not in err  # quiet
    images = torch.stack([load_test_set("mvtec", tmp_path, "widget", 64)[i]["image"]
                          for i in range(2)])
    _check_equals_anomalib(detector, images)
    grad = _input_gradient(detector, images)
    assert (grad.flatten(1).abs().sum(1) > 0).all()
    assert not detector.model(detector.model_input(images.requires_grad_(True))) \
        .pred_score.requires_grad


@pytest.mark.slow
def test_evaluate_detector_attacks_a_baseline_with_the_suite(patchcore, faint):
    """The baseline through evaluate_detector: patchguard's own PGD and Square (not the stand-ins
    above) lower an undefended PatchCore's AUROC."""
    from patchguard.api import evaluate_detector

    test_set = load_test_set("mvtec", faint.parent, faint.name, SIZE)
    rows = evaluate_detector(patchcore, test_set, (0, 8), ("pgd", "square"), queries=300,
                             batch_size=8).rows
    clean, pgd, square = rows
    assert pgd["objective"] == "score" and square["queries"] == 300  # no patch logits
    assert pgd["image_auroc"] < clean["image_auroc"] - 0.3
    assert square["image_auroc"] < clean["image_auroc"] - 0.1
    assert all(p.grad is None for p in patchcore.parameters())
