import math
import pickle

import numpy as np
import pytest

from patchguard.data.layouts import KNOWN_CLASSES
from patchguard.data.pseudo_anomaly import (
    AUGMENTATION_POOLS,
    LOWER_BOUNDS_224,
    SEVERITY_LEVELS,
    SEVERITY_PARAMS,
    SEVERITY_PROBS,
    PseudoAnomalyGenerator,
    apply_augmentation,
    find_patch_locations,
    min_patch_size,
    perlin_noise,
    sample_augmentations,
    sample_severity,
)
from patchguard.data.pseudo_anomaly.generator import _run_lengths


def disc(h: int, w: int, radius: float, cy: float | None = None, cx: float | None = None):
    cy = (h - 1) / 2 if cy is None else cy
    cx = (w - 1) / 2 if cx is None else cx
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 3.0)[..., None] * np.cos(yy / 5.0)[..., None]
    noise = rng.normal(0, 25, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def rect_inside_loop(fg: np.ndarray, x: int, y: int, w: int, h: int) -> bool:
    if x < 0 or y < 0 or y + h > fg.shape[0] or x + w > fg.shape[1]:
        return False
    for yy in range(y, y + h):
        for xx in range(x, x + w):
            if not fg[yy, xx]:
                return False
    return True


# ---------------------------------------------------------------- lower bounds


def test_min_patch_size_known_classes():
    assert min_patch_size("mvtec", "screw", 224) == 9
    assert min_patch_size("mvtec", "bottle", 224) == 14
    assert min_patch_size("visa", "capsules", 224) == 6
    assert min_patch_size("visa", "cashew", 224) == 10
    assert min_patch_size("mpdd", "tubes", 224) == 6
    assert min_patch_size("mpdd", "metal_plate", 224) == 14
    assert min_patch_size("btad", "01", 224) == 9
    assert min_patch_size("btad", "1", 224) == 9
    assert min_patch_size("btad", "02", 224) == 14
    assert min_patch_size("wfdd", "anything", 224) == 9
    assert min_patch_size("headct", "headct", 224) == 9
    assert min_patch_size("dtd", "Woven_001", 224) == 14
    assert min_patch_size("brats2021", "brain", 224) == 14
    assert min_patch_size("MVTec", "Screw", 224) == 9


def test_min_patch_size_unknown_and_scaling():
    assert min_patch_size("nope", "nope", 224) == 14
    assert min_patch_size("mvtec", "unknown_class", 224) == 14
    assert min_patch_size("mvtec", "bottle", 448) == 28
    assert min_patch_size("mvtec", "bottle", 112) == 7
    assert min_patch_size("visa", "capsules", 448) == 12
    assert min_patch_size("mvtec", "screw", 336) == round(9 * 336 / 224)
    # Never below 2, however small the image.
    assert min_patch_size("visa", "capsules", 16) == 2


def test_lower_bounds_table_shape():
    assert set(LOWER_BOUNDS_224) == {
        "mvtec",
        "visa",
        "mpdd",
        "btad",
        "dtd",
        "wfdd",
        "brats2021",
        "headct",
    }
    for bounds in LOWER_BOUNDS_224.values():
        assert "*" in bounds
        assert set(bounds.values()) <= {6, 9, 10, 14}


# docs/method.md, section 5, written out here as the independent reference: every class of every
# data set whose bound is not 14.
METHOD_BOUNDS_NOT_14 = {
    ("mvtec", "screw"): 9, ("visa", "capsules"): 6, ("visa", "fryum"): 6, ("visa", "cashew"): 10,
    ("mpdd", "bracket_black"): 6, ("mpdd", "bracket_brown"): 6, ("mpdd", "bracket_white"): 6,
    ("mpdd", "connector"): 6, ("mpdd", "tubes"): 6, ("btad", "01"): 9, ("btad", "03"): 9,
    ("headct", "headct"): 9, **{("wfdd", c): 9 for c in KNOWN_CLASSES["wfdd"]},
}


def test_every_known_class_has_the_method_bound():
    for dataset in LOWER_BOUNDS_224:
        for class_name in KNOWN_CLASSES[dataset]:
            expected = METHOD_BOUNDS_NOT_14.get((dataset, class_name), 14)
            assert min_patch_size(dataset, class_name, 224) == expected, (dataset, class_name)


# ---------------------------------------------------------------- locations


def test_run_lengths_match_loop_reference():
    rng = np.random.default_rng(3)
    mask = rng.random((13, 17)) > 0.3
    right, down = _run_lengths(mask)
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            r = 0
            while x + r < w and mask[y, x + r]:
                r += 1
            d = 0
            while y + d < h and mask[y + d, x]:
                d += 1
            assert right[y, x] == r
            assert down[y, x] == d


@pytest.mark.parametrize("seed", range(8))
def test_find_patch_locations_rectangles_inside_foreground(seed):
    rng = np.random.default_rng(seed)
    fg = disc(40, 52, 15, cy=18, cx=30) | disc(40, 52, 8, cy=30, cx=10)
    fg &= rng.random(fg.shape) > 0.002  # a few holes that rectangles must avoid
    x1, y1, x2, y2, w, h = find_patch_locations(fg, 6, rng)
    assert w >= 6 and h >= 6
    assert fg[y1, x1] and fg[y2, x2]
    assert rect_inside_loop(fg, x1, y1, w, h)
    assert rect_inside_loop(fg, x2, y2, w, h)


def test_find_patch_locations_sizes_vary_and_reach_large_values():
    fg = np.ones((64, 64), dtype=bool)
    sizes = [find_patch_locations(fg, 4, np.random.default_rng(s))[4:] for s in range(60)]
    ws = [w for w, _ in sizes]
    assert min(ws) >= 4
    assert max(ws) > 20
    assert len(set(sizes)) > 20


def test_find_patch_locations_size_scale_limits_maximum():
    fg = np.ones((112, 112), dtype=bool)
    for s in range(40):
        _, _, _, _, w, h = find_patch_locations(fg, 8, np.random.default_rng(s), size_scale=0.25)
        assert 8 <= w <= 28 and 8 <= h <= 28


def test_find_patch_locations_fallback_on_tiny_foreground():
    fg = np.zeros((32, 32), dtype=bool)
    fg[10, 10] = fg[10, 11] = fg[30, 31] = True
    for s in range(10):
        x1, y1, x2, y2, w, h = find_patch_locations(fg, 8, np.random.default_rng(s))
        assert (w, h) == (8, 8)
        for x, y in ((x1, y1), (x2, y2)):
            assert 0 <= x <= 32 - 8 and 0 <= y <= 32 - 8
            # The fallback starts at a foreground point, moved back only to stay in the image.
            assert (x, y) in {(10, 10), (11, 10), (24, 24)}


def test_find_patch_locations_image_smaller_than_bound():
    fg = np.ones((5, 7), dtype=bool)
    x1, y1, x2, y2, w, h = find_patch_locations(fg, 14, np.random.default_rng(0))
    assert (x1, y1, x2, y2, w, h) == (0, 0, 0, 0, 7, 5)


def test_find_patch_locations_empty_foreground_means_everything():
    fg = np.zeros((30, 40), dtype=bool)
    x1, y1, x2, y2, w, h = find_patch_locations(fg, 5, np.random.default_rng(1))
    assert w >= 5 and h >= 5
    assert x1 + w <= 40 and x2 + w <= 40 and y1 + h <= 30 and y2 + h <= 30


# ---------------------------------------------------------------- perlin


def perlin_loop_reference(shape, scale, rng, octaves):
    perm = rng.permutation(256)
    angles = rng.uniform(0.0, 2.0 * np.pi, 256)
    offsets = rng.uniform(0.0, 256.0, size=(octaves, 2))

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    def grad_dot(i, j, dx, dy):
        g = perm[(perm[i % 256] + j) % 256]
        return math.cos(angles[g]) * dx + math.sin(angles[g]) * dy

    out = np.zeros(shape)
    for y in range(shape[0]):
        for x in range(shape[1]):
            total, amp, amp_sum = 0.0, 1.0, 0.0
            for o in range(octaves):
                period = scale / 2**o
                u = x / period + offsets[o, 0]
                v = y / period + offsets[o, 1]
                i, j = math.floor(u), math.floor(v)
                fx, fy = u - i, v - j
                n00 = grad_dot(i, j, fx, fy)
                n10 = grad_dot(i + 1, j, fx - 1, fy)
                n01 = grad_dot(i, j + 1, fx, fy - 1)
                n11 = grad_dot(i + 1, j + 1, fx - 1, fy - 1)
                sx, sy = fade(fx), fade(fy)
                a = n00 + sx * (n10 - n00)
                b = n01 + sx * (n11 - n01)
                total += amp * (a + sy * (b - a))
                amp_sum += amp
                amp *= 0.5
            out[y, x] = total * math.sqrt(2) / amp_sum
    return out


@pytest.mark.parametrize(("shape", "scale", "octaves"), [((6, 9), 4.0, 6), ((7, 5), 2.5, 3)])
def test_perlin_matches_per_pixel_reference(shape, scale, octaves):
    got = perlin_noise(shape, scale, np.random.default_rng(11), octaves=octaves)
    ref = perlin_loop_reference(shape, scale, np.random.default_rng(11), octaves)
    assert got.shape == shape
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_perlin_shape_range_and_determinism():
    a = perlin_noise((50, 73), 10.0, np.random.default_rng(5))
    b = perlin_noise((50, 73), 10.0, np.random.default_rng(5))
    c = perlin_noise((50, 73), 10.0, np.random.default_rng(6))
    assert a.shape == (50, 73) and a.dtype == np.float32
    assert np.abs(a).max() <= 1.0 + 1e-6
    assert a.std() > 0.05
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Spatially smooth at the first octave's period: neighbours are strongly correlated.
    coarse = perlin_noise((64, 64), 32.0, np.random.default_rng(5), octaves=1)
    assert np.corrcoef(coarse[:, :-1].ravel(), coarse[:, 1:].ravel())[0, 1] > 0.9


def test_perlin_rejects_bad_scale():
    with pytest.raises(ValueError):
        perlin_noise((4, 4), 0.0, np.random.default_rng(0))


# ---------------------------------------------------------------- augmentations


def test_severity_frequencies():
    rng = np.random.default_rng(0)
    draws = [sample_severity(rng) for _ in range(10000)]
    freq = {lvl: draws.count(lvl) / len(draws) for lvl in SEVERITY_LEVELS}
    assert abs(freq["light"] - 0.2) < 0.02
    assert abs(freq["medium"] - 0.2) < 0.02
    assert abs(freq["heavy"] - 0.6) < 0.02


# The parameter table of docs/method.md, section 5, copied verbatim (the independent reference).
METHOD_TABLE = "\n".join([
    "| brightness, contrast, saturation jitter | 0.1 | 0.4 | 0.8-1.0 |",
    "| hue jitter | 0.1 | 0.3 | 0.5 |",
    "| elastic alpha (sigma 3) | 10-20 | 20-40 | 40-100 |",
    "| torn-paper lines (1 px, black or white) | 1-3 | 5-10 | 10-20 |",
    "| Perlin scale (6 octaves) | 20-50 | 10-20 | 5-10 |",
    "| Perlin threshold (0-255 after min-max) | 200-255 | 150-200 | 128-150 |",
    "| swirl strength (Gaussian falloff, sigma = min(h, w) // 3) | 0.5-1.0"
    " | 1.0-1.5 | 1.5-2.0 |",
    "| random erasing: area ratio / rectangles (aspect 0.3-3.3, random colour)"
    " | 0.01-0.05 / 1-2 | 0.05-0.1 / 2-3 | 0.1-0.2 / 3-5 |",
    "| gaussian blur radius | 0.2-0.5 | 0.8-1.5 | 2.0-3.0 |",
    "| JPEG quality | 30-50 | 20-30 | 1-20 |",
])
# Row of the table -> the generator's parameter names (two for the erasing row).
METHOD_ROWS = {
    "brightness": ["jitter_bcs"], "hue": ["jitter_hue"], "elastic": ["elastic_alpha"],
    "torn-paper": ["torn_lines"], "Perlin scale": ["perlin_scale"],
    "Perlin threshold": ["perlin_threshold"], "swirl": ["swirl_strength"],
    "random erasing": ["erase_area", "erase_count"], "gaussian": ["blur_radius"],
    "JPEG": ["jpeg_quality"],
}
METHOD_POOLS = {  # docs/method.md, section 5, step 4
    "light": {"gaussian blur", "elastic transform", "swirl"},
    "medium": {"gaussian blur", "swirl", "JPEG artefacts", "elastic transform"},
    "heavy": {"elastic transform", "torn-paper lines", "JPEG artefacts", "Perlin-noise mask",
              "swirl", "random erasing", "gaussian blur"},
}
POOL_NAMES = {"gaussian blur": "gaussian_blur", "elastic transform": "elastic",
              "swirl": "swirl", "JPEG artefacts": "jpeg", "torn-paper lines": "torn_paper",
              "Perlin-noise mask": "perlin", "random erasing": "random_erasing"}


def _method_ranges() -> dict[str, dict[str, tuple[float, float]]]:
    def span(text: str) -> tuple[float, float]:
        low, _, high = text.strip().partition("-")
        return float(low), float(high or low)

    table: dict[str, dict[str, tuple[float, float]]] = {lvl: {} for lvl in SEVERITY_LEVELS}
    for line in METHOD_TABLE.strip().splitlines():
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        names = next(v for k, v in METHOD_ROWS.items() if label.startswith(k))
        for level, cell in zip(SEVERITY_LEVELS, cells):
            for name, part in zip(names, cell.split("/")):
                table[level][name] = span(part)
    return table


def test_severity_table_equals_method_md():
    assert SEVERITY_PROBS == (0.2, 0.2, 0.6)
    expected = _method_ranges()
    for level in SEVERITY_LEVELS:
        params = dict(SEVERITY_PARAMS[level])
        assert params.pop("max_augmentations") == {"light": 1, "medium": 2, "heavy": 4}[level]
        ours = {k: (float(v), float(v)) if np.isscalar(v) else tuple(map(float, v))
                for k, v in params.items()}
        assert ours == expected[level], level
        assert set(AUGMENTATION_POOLS[level]) == {POOL_NAMES[n] for n in METHOD_POOLS[level]}


@pytest.mark.parametrize("level", SEVERITY_LEVELS)
def test_sample_augmentations_structure(level):
    rng = np.random.default_rng(1)
    max_n = SEVERITY_PARAMS[level]["max_augmentations"]
    counts, jitter_positions = set(), set()
    for _ in range(300):
        names = sample_augmentations(level, rng)
        assert names.count("color_jitter") == 1
        others = [n for n in names if n != "color_jitter"]
        assert len(set(others)) == len(others)
        assert set(others) <= set(AUGMENTATION_POOLS[level])
        counts.add(len(others))
        jitter_positions.add(names.index("color_jitter"))
    assert counts == set(range(max_n + 1))
    assert jitter_positions == set(range(max_n + 1))


@pytest.mark.parametrize("level", SEVERITY_LEVELS)
@pytest.mark.parametrize("size", [(2, 2), (5, 9), (31, 17)])
def test_every_augmentation_keeps_shape_and_is_deterministic(level, size):
    patch = textured(*size, seed=2)
    for name in (*AUGMENTATION_POOLS[level], "color_jitter"):
        a = apply_augmentation(patch, name, level, np.random.default_rng(4))
        b = apply_augmentation(patch, name, level, np.random.default_rng(4))
        assert a.shape == patch.shape and a.dtype == np.uint8, name
        np.testing.assert_array_equal(a, b)


def test_heavy_augmentations_change_a_textured_patch():
    patch = textured(40, 48, seed=1)
    for name in AUGMENTATION_POOLS["heavy"]:
        changed = [
            not np.array_equal(
                apply_augmentation(patch, name, "heavy", np.random.default_rng(s)), patch
            )
            for s in range(5)
        ]
        assert any(changed), name


def test_perlin_mask_paints_one_colour():
    patch = textured(40, 40, seed=3)
    out = apply_augmentation(patch, "perlin", "heavy", np.random.default_rng(9))
    changed = np.any(out != patch, axis=-1)
    assert changed.any()
    assert len({tuple(c) for c in out[changed]}) == 1


def test_torn_paper_draws_black_or_white():
    patch = np.full((40, 40, 3), 128, dtype=np.uint8)
    out = apply_augmentation(patch, "torn_paper", "heavy", np.random.default_rng(2))
    changed = np.any(out != patch, axis=-1)
    assert changed.sum() >= 40  # at least ten lines of about a patch width each, overlaps aside
    assert {tuple(c) for c in out[changed]} <= {(0, 0, 0), (255, 255, 255)}


def test_light_colour_jitter_is_mild_on_grey():
    patch = np.full((16, 16, 3), 128, dtype=np.uint8)
    for s in range(20):
        out = apply_augmentation(patch, "color_jitter", "light", np.random.default_rng(s))
        assert np.abs(out.astype(int) - 128).max() <= 14


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize("size", [64, 112])
@pytest.mark.parametrize("seed", range(6))
def test_generator_only_changes_the_mask_inside_dilated_foreground(size, seed):
    image = textured(size, size, seed=seed)
    fg = disc(size, size, size * 0.2)
    gen = PseudoAnomalyGenerator(min_patch_size("mvtec", "bottle", size))
    out, mask = gen(image, fg, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    inside = mask > 0
    assert inside.any()
    np.testing.assert_array_equal(out[~inside], image[~inside])
    changed = np.any(out != image, axis=-1)
    assert not np.any(changed & ~inside)
    dilated = gen.dilate(fg, (size, size))
    assert not np.any(inside & ~dilated)
    # The mask is larger than the undilated disc allows only within the 10 px dilation ring.
    assert dilated.sum() > fg.sum()


def test_generator_changes_pixels_usually():
    image = textured(64, 64)
    gen = PseudoAnomalyGenerator(9)
    changed = [np.any(gen(image, None, np.random.default_rng(s))[0] != image) for s in range(10)]
    assert sum(changed) >= 8


def test_generator_determinism():
    image = textured(64, 80, seed=4)
    fg = disc(64, 80, 18)
    gen = PseudoAnomalyGenerator(8)
    a = gen(image, fg, np.random.default_rng(123))
    b = gen(image, fg, np.random.default_rng(123))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [gen(image, fg, np.random.default_rng(s)) for s in (124, 125, 126)]
    assert any(not (np.array_equal(a[0], o[0]) and np.array_equal(a[1], o[1])) for o in others)


def test_generator_does_not_modify_input():
    image = textured(48, 48)
    copy = image.copy()
    PseudoAnomalyGenerator(6)(image, None, np.random.default_rng(0))
    np.testing.assert_array_equal(image, copy)


@pytest.mark.parametrize(
    "foreground",
    [None, "empty", "tiny", "float"],
)
def test_generator_foreground_variants(foreground):
    h, w = 50, 70  # non-square on purpose
    image = textured(h, w, seed=7)
    if foreground == "empty":
        fg = np.zeros((h, w), dtype=bool)
    elif foreground == "tiny":
        fg = np.zeros((h, w), dtype=bool)
        fg[25, 35] = fg[26, 35] = True
    elif foreground == "float":
        fg = disc(h, w, 15).astype(np.float32)
    else:
        fg = None
    gen = PseudoAnomalyGenerator(12)
    for s in range(5):
        out, mask = gen(image, fg, np.random.default_rng(s))
        assert mask.any()
        np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_generator_tiny_foreground_without_dilation_uses_fallback():
    image = textured(32, 32)
    fg = np.zeros((32, 32), dtype=bool)
    fg[5, 5] = True
    gen = PseudoAnomalyGenerator(6, dilation_iterations=0)
    out, mask = gen(image, fg, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    assert ys.min() >= 5 and xs.min() >= 5 and ys.max() < 11 and xs.max() < 11


def test_generator_image_smaller_than_bound():
    image = textured(9, 11)
    out, mask = PseudoAnomalyGenerator(14)(image, None, np.random.default_rng(0))
    assert mask.shape == (9, 11) and mask.any()
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_generator_is_picklable_and_validates():
    gen = PseudoAnomalyGenerator(9, size_scale=0.5)
    clone = pickle.loads(pickle.dumps(gen))
    image = textured(40, 40)
    a = gen(image, None, np.random.default_rng(1))
    b = clone(image, None, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError):
        gen(image[..., 0], None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        gen(image, np.ones((39, 40), dtype=bool), np.random.default_rng(0))
    with pytest.raises(ValueError):
        PseudoAnomalyGenerator(9, size_scale=0.0)
