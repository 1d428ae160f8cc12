"""Fixtures of the fault tests: a tiny data set, a finished run, a calibrated and an imported
checkpoint, each built once per session (every test that damages one works on a copy).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from patchguard.cli import main

from .common import (
    CLASS,
    MODEL_FLAGS,
    TRAIN_EPOCHS,
    Result,
    main_or_fail,
    original_state_dict,
)
from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE, TINY_SIZE


@pytest.fixture
def cli(capsys, caplog, tmp_path_factory) -> Callable[..., Result]:
    """Run ``main(argv)``; fail the test when it raises (SystemExit from argparse is a code).

    pytest's temporary folders are named after the test (``test_train_refuses_out_of_dom0``),
    so in the captured text that part of every path becomes ``<tmp>``: a message must name the
    flag itself, not merely print a path that happens to contain it.
    """
    caplog.set_level(logging.INFO)
    base = re.escape(str(tmp_path_factory.getbasetemp()))
    tmp_dirs = re.compile(base + r"/[^/\s'\"]+")

    def run(*argv: object) -> Result:
        capsys.readouterr()
        caplog.clear()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as error:  # argparse: usage error, exit code 2
            code = error.code
        except BaseException as error:  # noqa: BLE001 - any escape is a finding
            captured = capsys.readouterr()
            pytest.fail(f"main raised {type(error).__name__}: {error}\n"
                        f"{captured.out[-1500:]}{captured.err[-1500:]}{caplog.text[-1500:]}")
        captured = capsys.readouterr()
        return Result(code, tmp_dirs.sub("<tmp>", captured.out + captured.err + caplog.text))

    return run


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """Root of a tiny MVTec-layout data set with the one class 'bottle'."""
    root = tmp_path_factory.mktemp("faults_data")
    make_mvtec_class(root, name=CLASS, n_train=4, n_good=2, n_bad=2, size=64)
    return root


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data) -> Path:
    """A finished 3-epoch run folder: last.pt, epoch_0002/3.pt, train_log.jsonl."""
    out = tmp_path_factory.mktemp("faults_run") / "run"
    main_or_fail(["train", "--dataset-dir", data, "--class-name", CLASS, *MODEL_FLAGS,
                   "--epochs", TRAIN_EPOCHS, "--save-every", "1", "--output-dir", out])
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (tests may damage it)."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory, finished_run, data) -> Path:
    """A copy of the finished run's checkpoint with image and pixel thresholds."""
    path = tmp_path_factory.mktemp("faults_cal") / "last.pt"
    shutil.copy(finished_run / "last.pt", path)
    main_or_fail(["calibrate", "--checkpoint", path, "--normal-dir", data / CLASS / "train/good",
                   "--device", "cpu", "--quiet"])
    return path


@pytest.fixture(scope="session")
def original(tmp_path_factory) -> Path:
    """An original-PatchGuard state dict file."""
    path = tmp_path_factory.mktemp("faults_orig") / f"patchguard_mvtec_{CLASS}.pth"
    torch.save(original_state_dict(), path)
    return path


@pytest.fixture(scope="session")
def imported(tmp_path_factory, original) -> Path:
    """A patchguard checkpoint converted from the original's state dict (no optimizer state)."""
    path = tmp_path_factory.mktemp("faults_imp") / "last.pt"
    main_or_fail(["import-checkpoint", "--original", original, "--output", path,
                   "--backbone", TINY_BACKBONE, "--image-size", str(TINY_SIZE)])
    return path
