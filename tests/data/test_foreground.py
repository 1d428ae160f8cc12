"""Automatic foreground masks: threshold, PCA on synthetic and tiny-ViT features, auto, writing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from patchguard.data.foreground import (
    auto_masks,
    choose_full,
    clean_mask,
    dino_masks,
    full_masks,
    generate_foreground_masks,
    mask_iou,
    otsu_threshold,
    pca_masks,
    refine_mask,
    threshold_masks,
)
from patchguard.data.images import read_mask
from patchguard.data.layouts.folders import mvtec_like_records
from patchguard.models.backbone import create_backbone

from helpers.models import TINY_BACKBONE, TINY_SIZE


def _disc_image(rng: np.random.Generator, size: int = 96, inverse: bool = False,
                radius: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on a dark noisy background (or the inverse) and its true mask."""
    yy, xx = np.mgrid[0:size, 0:size]
    centre = size / 2 + rng.uniform(-size * 0.05, size * 0.05, 2)
    truth = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (radius * size) ** 2
    fg, bg = (60.0, 190.0) if inverse else (190.0, 60.0)
    image = np.where(truth, fg, bg) + rng.normal(0, 20, (size, size))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2), truth


def _texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    cells = rng.uniform(0, 255, (size // 8, size // 8))
    image = np.kron(cells, np.ones((8, 8))) + rng.normal(0, 10, (size, size))
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("inverse", [False, True])
def test_threshold_recovers_disc(inverse: bool) -> None:
    rng = np.random.default_rng(1)
    pairs = [_disc_image(rng, inverse=inverse) for _ in range(4)]
    masks = threshold_masks([image for image, _ in pairs])
    for mask, (_, truth) in zip(masks, pairs):
        assert mask.dtype == bool and mask.shape == truth.shape
        assert mask_iou(mask, truth) > 0.9


def test_full_masks_and_iou() -> None:
    masks = full_masks([np.zeros((5, 7, 3), np.uint8), np.zeros((4, 4), np.uint8)])
    assert [m.shape for m in masks] == [(5, 7), (4, 4)] and all(m.all() for m in masks)
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_otsu_threshold_separates_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-3, 0.5, 500), rng.normal(4, 0.5, 200)])
    assert -1.5 < otsu_threshold(values) < 2.5


def test_clean_mask_removes_specks_fills_small_holes_keeps_big_hole() -> None:
    mask = np.zeros((100, 100), bool)
    yy, xx = np.mgrid[0:100, 0:100]
    radius = np.hypot(yy - 50, xx - 50)
    mask[(radius < 35) & (radius > 15)] = True  # ring: a big hole that must stay
    mask[5, 5] = True  # isolated speck
    mask[50 + 25, 50] = False  # pinhole in the ring
    cleaned = clean_mask(mask)
    assert not cleaned[5, 5] and cleaned[75, 50] and not cleaned[50, 50]


@pytest.mark.parametrize("flip", [False, True])
def test_pca_recovers_planted_foreground(flip: bool) -> None:
    rng = np.random.default_rng(3)
    n, grid, dim = 5, 8, 32
    planted = np.zeros((n, grid, grid), bool)
    for i in range(n):
        top, left = rng.integers(2, 4, 2)
        planted[i, top:top + 3, left:left + 3] = True
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    sign = -1.0 if flip else 1.0
    features = rng.normal(0, 0.05, (n, grid, grid, dim)) + sign * 3.0 * planted[..., None] * (
        direction
    )
    sizes = [(grid * 8, grid * 8)] * n
    masks = pca_masks(torch.from_numpy(features), sizes)
    for mask, truth in zip(masks, planted):
        expected = np.kron(truth, np.ones((8, 8), bool))
        assert mask.shape == expected.shape
        assert mask_iou(mask, expected) > 0.9
        # Exact at patch resolution: each patch's centre pixel carries its patch label.
        assert np.array_equal(mask[4::8, 4::8], truth)


def test_dino_masks_with_tiny_random_vit_shapes() -> None:
    torch.manual_seed(0)
    model = create_backbone(TINY_BACKBONE, TINY_SIZE).eval()
    rng = np.random.default_rng(0)
    images = [_disc_image(rng, size=s)[0] for s in (64, 80, 50)]
    images.append(np.zeros((70, 90), np.uint8))  # grayscale, non-square
    masks = dino_masks(images, model=model, device="cpu")
    assert [m.shape for m in masks] == [(64, 64), (80, 80), (50, 50), (70, 90)]
    assert all(m.dtype == bool for m in masks)
    masks = dino_masks(images[:2], model=model, device="cpu", layer=2, threshold="zero")
    assert [m.shape for m in masks] == [(64, 64), (80, 80)]


def test_auto_picks_full_for_texture_and_base_for_object(caplog) -> None:
    rng = np.random.default_rng(5)
    textures = [_texture(rng) for _ in range(6)]
    with caplog.at_level(logging.INFO, logger="patchguard.data.foreground"):
        method, masks = auto_masks(textures, base="threshold")
    assert method == "full" and all(m.all() for m in masks)
    assert "full" in caplog.text
    objects = [_disc_image(rng)[0] for _ in range(6)]
    method, masks = auto_masks(objects, base="threshold")
    assert method == "threshold" and not any(m.all() for m in masks)


def test_auto_with_tiny_vit_runs() -> None:
    model = create_backbone(TINY_BACKBONE, TINY_SIZE).eval()
    rng = np.random.default_rng(2)
    method, masks = auto_masks([_disc_image(rng, 64)[0] for _ in range(3)], model=model,
                               device="cpu")
    assert method in ("dino", "full") and [m.shape for m in masks] == [(64, 64)] * 3


def test_choose_full_criteria() -> None:
    disc = np.zeros((50, 50), bool)
    disc[15:35, 15:35] = True
    assert choose_full([disc] * 4)[0] is False
    assert choose_full([np.ones((50, 50), bool)] * 4)[0] is True
    half = np.zeros((50, 50), bool)
    half[:, :25] = True  # touches the border as much as a texture would
    assert choose_full([half] * 4)[0] is True
    tiny = np.zeros((50, 50), bool)
    tiny[24:26, 24:26] = True
    assert choose_full([disc, tiny, disc, tiny])[0] is True  # unstable coverage


def _write_class(root, n: int = 4, suffix: str = ".png"):
    rng = np.random.default_rng(7)
    good = root / "obj" / "train" / "good"
    good.mkdir(parents=True)
    truths = {}
    for i in range(n):
        image, truth = _disc_image(rng, size=72)
        Image.fromarray(image).save(good / f"{i:03d}{suffix}")
        truths[f"{i:03d}"] = truth
    return truths


def test_generate_writes_skips_and_is_idempotent(tmp_path) -> None:
    truths = _write_class(tmp_path)
    folder = generate_foreground_masks("mvtec", tmp_path, "obj", method="threshold",
                                       progress=False)
    assert folder == tmp_path / "obj" / "train" / "foreground_mask"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == [f"{i:03d}.png" for i in range(4)]
    for name in names:
        mask = read_mask(folder / name)
        assert set(np.unique(np.asarray(Image.open(folder / name)))) <= {0, 255}
        assert mask_iou(mask > 0, truths[name[:-4]]) > 0.9
    records = mvtec_like_records(tmp_path, "obj", "train")
    assert all(r.foreground_path is not None for r in records)

    # An existing (hand-made) mask is kept; the missing one is regenerated.
    custom = np.zeros((72, 72), np.uint8)
    Image.fromarray(custom).save(folder / "000.png")
    (folder / "001.png").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    generate_foreground_masks("mvtec", tmp_path, "obj", method="threshold", progress=False)
    assert not np.asarray(Image.open(folder / "000.png")).any()
    assert (folder / "001.png").exists()
    for name in ("002.png", "003.png"):
        assert (folder / name).stat().st_mtime_ns == stamps[name]
    # Idempotent: a second run changes nothing and leaves no temp files behind.
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    generate_foreground_masks("mvtec", tmp_path, "obj", method="threshold", progress=False)
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == before
    # overwrite regenerates the hand-made one.
    generate_foreground_masks("mvtec", tmp_path, "obj", method="threshold", progress=False,
                              overwrite=True)
    assert np.asarray(Image.open(folder / "000.png")).any()


def test_generate_full_and_jpeg_names(tmp_path) -> None:
    _write_class(tmp_path, n=2, suffix=".jpg")
    folder = generate_foreground_masks("mvtec", tmp_path, "obj", method="full", progress=False)
    assert sorted(p.name for p in folder.glob("*.png")) == ["000.png", "001.png"]
    assert (np.asarray(Image.open(folder / "000.png")) == 255).all()
    with pytest.raises(ValueError):
        generate_foreground_masks("mvtec", tmp_path, "obj", method="bogus")
    with pytest.raises(ValueError):
        generate_foreground_masks("nope", tmp_path, "obj")
    with pytest.raises(ValueError):
        generate_foreground_masks("mvtec", tmp_path, "missing", method="full")


def test_refine_mask_recovers_ring_hole_from_blocky_mask() -> None:
    rng = np.random.default_rng(4)
    size = 112
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    truth = (radius < 36) & (radius > 16)
    image = np.where(truth[..., None], [200, 170, 60], [40, 60, 90]) + rng.normal(0, 8, (size,
                                                                                       size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    coarse = np.kron(np.hypot(*(np.mgrid[0:8, 0:8] - 3.5)) < 3, np.ones((14, 14), bool))
    refined = refine_mask(image, coarse)
    assert mask_iou(refined, truth) > 0.9 > mask_iou(coarse, truth)
    assert refine_mask(image, np.zeros((size, size), bool)).sum() == 0


def test_generated_masks_carry_a_marker(tmp_path):
    from patchguard.data.foreground import generate_foreground_masks, generated_info

    cls = tmp_path / "obj" / "train" / "good"
    cls.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cls / f"{i}.png")
    folder = generate_foreground_masks("mvtec", tmp_path, "obj", method="full", progress=False)
    assert generated_info(folder) == {"method": "full", "requested": "full", "masks": 2,
                                      "mean_coverage": 1.0}
    assert generated_info(tmp_path) is None
