"""Shared fixtures: a tiny generated MVTec-layout data set and a tiny random ViT config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.data import REFERENCE_DIR, make_mvtec_class
from helpers.models import TINY_BACKBONE, TINY_SIZE, QuantisedInput, tiny_config, tiny_model

# Re-exported for test modules of other branches that still import them from here; new tests
# import from helpers.
__all__ = ["REFERENCE_DIR", "TINY_BACKBONE", "TINY_SIZE", "QuantisedInput", "make_mvtec_class",
           "tiny_config", "tiny_model"]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on machines without CUDA (they run where one is)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        # The marker itself: item.keywords also holds every parent's name, and a checkout in a
        # folder named "gpu" skipped the whole suite.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tiny models gain nothing from threads, and
    on a shared 2-core machine the extra threads only spin (measured on test_reference.py under
    load: 24 s with two threads, 8 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Root of a tiny MVTec-layout data set with one class, 'widget'."""
    root = tmp_path_factory.mktemp("data")
    make_mvtec_class(root)
    return root
