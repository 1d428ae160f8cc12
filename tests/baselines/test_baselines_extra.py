"""The baselines package without anomalib: importable, and a clear error naming the extra."""

from __future__ import annotations

import sys

import pytest

import patchguard.baselines as baselines


def test_package_imports_without_anomalib_and_lists_the_baselines():
    assert set(baselines.BASELINES) == {"patchcore", "padim", "efficient_ad"}
    assert baselines.get_baseline("efficient_ad").min_image_size == 256
    with pytest.raises(ValueError, match="available: patchcore, padim, efficient_ad"):
        baselines.get_baseline("fastflow")


def test_missing_anomalib_names_the_extra(monkeypatch, tmp_path):
    # None in sys.modules makes ``import anomalib`` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "anomalib", None)
    with pytest.raises(ImportError, match=r"pip install 'patchguard\[anomalib\]'"):
        baselines.require_anomalib()
    with pytest.raises(ImportError, match=r"patchguard\[anomalib\]"):
        baselines.train_baseline("patchcore", tmp_path)


def test_too_old_anomalib_is_refused(monkeypatch):
    fake = type(sys)("anomalib")
    fake.__version__ = "1.2.0"
    monkeypatch.setitem(sys.modules, "anomalib", fake)
    with pytest.raises(ImportError, match="too old"):
        baselines.require_anomalib()


def test_holdout_split_is_seeded_and_keeps_training_images():
    records = list(range(10))
    train, held = baselines.fit.split_holdout(records, 0.2, seed=3)
    assert len(held) == 2 and sorted(train + held) == records
    assert baselines.fit.split_holdout(records, 0.2, seed=3) == (train, held)
    assert len(baselines.fit.split_holdout(records[:2], 0.9, seed=0)[0]) == 1
    with pytest.raises(ValueError, match="at least 2"):
        baselines.fit.split_holdout(records[:1], 0.1, seed=0)
