import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from patchguard.metrics import auroc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 5000)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding creates many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_pixel_maps_shape_and_single_class():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) > 0.8
    maps = rng.random((3, 8, 8)).astype(np.float16) + masks
    assert auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert auroc(np.zeros(5), np.arange(5)) is None


def test_auroc_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])
