
import pytest

from patchguard.data.datasets import TestDataset
from patchguard.data.layouts import load_records
from patchguard.evaluation.sanity import sanity_check

from helpers.data import make_mvtec_class
from helpers.models import QuantisedInput, tiny_model


def _data(tmp_path):
    make_mvtec_class(tmp_path, n_good=4, n_bad=4)
    return TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)


@pytest.mark.slow
def test_sanity_passes_on_an_honest_model(tmp_path):
    report = sanity_check(tiny_model(), _data(tmp_path), objective="score", steps=5,
                          epsilons=(2, 8), more_steps_factor=2, progress=False,
                          square_queries=200)
    huge = report.rows[-1]
    assert huge["epsilon"] == 128.0 and huge["image_auroc"] <= 0.1
    assert report.passed, report.warnings
    square = report.rows[-2]
    assert square["attack"] == "square" and square["epsilon"] == 8.0 and square["queries"] == 200
    assert any("Square" in check for check in report.checks)


@pytest.mark.slow
def test_sanity_flags_gradient_masking(tmp_path):
    masked = QuantisedInput(tiny_model())
    report = sanity_check(masked, _data(tmp_path), objective="score", steps=5, epsilons=(2, 8),
                          more_steps_factor=2, progress=False, square_queries=300)
    assert not report.passed
    assert any("masked" in w for w in report.warnings)
    # Zero gradients leave PGD where it started; the gradient-free search is not fooled.
    square = [w for w in report.warnings if "Square" in w]
    assert len(square) == 1 and "stronger" in square[0] and "gradient masking" in square[0]
