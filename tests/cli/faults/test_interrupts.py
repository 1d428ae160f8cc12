"""Faults during work: Ctrl-C, a full disk, out of memory, killed writes, --debug.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from patchguard.cli import main

from .common import (
    CLASS,
    TRAIN_EPOCHS,
    assert_refused,
    digest,
    temp_leftovers,
    train_argv,
    write_yaml,
)

# ============================================================================ faults

_REAL_SAVE = torch.save


def failing_torch_save(error: Callable[[], BaseException], after_writes: int = 1):
    """torch.save whose file handle raises ``error()`` after some writes (Ctrl-C, disk full)."""

    def save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return _REAL_SAVE(obj, f, *args, **kwargs)
        calls = {"n": 0}

        class Handle:
            def write(self, data):
                calls["n"] += 1
                if calls["n"] > after_writes:
                    raise error()
                return f.write(data)

            def __getattr__(self, name):
                return getattr(f, name)

        return _REAL_SAVE(obj, Handle(), *args, **kwargs)

    return save


def _resume_argv(run: Path) -> list[object]:
    return ["train", "--output-dir", run, "--resume", "--epochs", TRAIN_EPOCHS + 1, "--quiet"]


def test_ctrl_c_during_checkpoint_write_gives_the_resume_hint(cli, run_copy, monkeypatch):
    # F-int-write. Before the fixes: torch turns the KeyboardInterrupt into
    # "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ..." (traceback).
    before = digest(run_copy / "last.pt")
    monkeypatch.setattr(torch, "save", failing_torch_save(KeyboardInterrupt))
    result = cli(*_resume_argv(run_copy))
    assert result.code in (1, 130), result
    assert "Traceback" not in result.text and "--resume" in result.text, result
    assert digest(run_copy / "last.pt") == before
    assert temp_leftovers(run_copy) == []


def test_ctrl_c_during_an_epoch_gives_the_resume_hint(cli, run_copy, monkeypatch):
    # F-int-epoch; passed before the fixes too
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    before = digest(run_copy / "last.pt")
    monkeypatch.setattr(torch.Tensor, "backward", interrupt)
    result = cli(*_resume_argv(run_copy))
    assert result.code in (1, 130), result
    assert "Traceback" not in result.text and "--resume" in result.text, result
    assert result.text.count("--resume") == 1, result  # one hint, not one per layer
    assert digest(run_copy / "last.pt") == before


@pytest.mark.parametrize("verb", ["train", "calibrate"])
def test_disk_full_during_checkpoint_write(cli, run_copy, data, monkeypatch, verb):
    # F-enospc-train / F-enospc-calibrate. Before the fixes: RuntimeError traceback
    # ("[enforce fail at inline_container.cc:672]"); the old checkpoint survives (atomic write).
    before = digest(run_copy / "last.pt")
    monkeypatch.setattr(torch, "save", failing_torch_save(
        lambda: OSError(errno.ENOSPC, "No space left on device")))
    if verb == "train":
        result = cli(*_resume_argv(run_copy))
    else:
        result = cli("calibrate", "--checkpoint", run_copy / "last.pt", "--normal-dir",
                     data / CLASS / "train/good", "--device", "cpu", "--quiet")
    assert_refused(result, "space", code=1)
    if verb == "train":
        assert "--resume" in result.text, result
    assert digest(run_copy / "last.pt") == before
    assert temp_leftovers(run_copy) == []


def test_cpu_out_of_memory_is_a_message(cli, run_copy, monkeypatch):
    # F-oom-cpu. Before the fixes: "RuntimeError: [enforce fail at alloc_cpu.cpp:127] ...
    # DefaultCPUAllocator: can't allocate memory" traceback (real with RLIMIT_AS, see catalogue).
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 268960000 bytes. "
                           "Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(torch.Tensor, "backward", oom)
    result = cli(*_resume_argv(run_copy))
    assert result.code in (1, 2), result
    assert "Traceback" not in result.text and "--batch-size" in result.text, result


def test_gpu_out_of_memory_is_a_message(cli, run_copy, monkeypatch):
    # F-oom-gpu; passed before the fixes too (exit code 2, suggests --batch-size)
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.Tensor, "backward", oom)
    result = cli(*_resume_argv(run_copy))
    assert result.code in (1, 2), result
    assert "Traceback" not in result.text and "--batch-size" in result.text, result


def test_temp_file_of_a_killed_write_is_cleaned_up(cli, run_copy):
    # F-kill-leftover. Before the fixes: a kill -9 during the write leaves .last.pt.*.tmp
    # (the size of a checkpoint) forever; the next run neither removes nor reuses it.
    stale = run_copy / ".last.pt.k1ll3d00.tmp"
    stale.write_bytes((run_copy / "last.pt").read_bytes()[:50_000])
    result = cli(*_resume_argv(run_copy))
    assert result.code == 0, result
    assert temp_leftovers(run_copy) == []


def test_debug_env_shows_the_traceback(data, tmp_path, monkeypatch, capsys):
    # F-debug. failed before the fixes (it had no debug switch: here a traceback escapes anyway, but
    # as a raise of TypeError, not exit code 2). PATCHGUARD_DEBUG=1 is the proposed name: the
    # message-only path stays the default and the switch adds the traceback for bug reports.
    monkeypatch.setenv("PATCHGUARD_DEBUG", "1")
    config = write_yaml(tmp_path / "c.yaml", data, tmp_path / "run", reg_layers=6)
    code = main(["train", "--config", str(config), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" in captured.err, captured.err[-2000:]


def test_ctrl_c_exits_130_and_debug_flag_shows_the_traceback(data, tmp_path, monkeypatch,
                                                             capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.Tensor, "backward", interrupt)
    assert main([str(a) for a in train_argv(data, tmp_path / "run")]) == 130
    config = write_yaml(tmp_path / "c.yaml", data, tmp_path / "run2", reg_layers=6)
    capsys.readouterr()
    assert main(["--debug", "train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "reg_layers" in err


# ============================================================================ past failures


@pytest.mark.parametrize("again", ["same command", "--resume"])
def test_full_disk_on_the_first_checkpoint_then_the_advice_works(cli, data, tmp_path,
                                                                  monkeypatch, again):
    # Formerly: after a full disk on the first checkpoint write, "run the command again" was
    # refused (the folder held a log) and --resume failed (no last.pt); only --overwrite worked.
    out = tmp_path / "run"
    argv = train_argv(data, out)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", failing_torch_save(
            lambda: OSError(errno.ENOSPC, "No space left on device")))
        failed = cli(*argv)
    assert_refused(failed, "space", "run the command again", code=1)
    assert not (out / "last.pt").exists()
    extra = ["--resume", out / "last.pt"] if again == "--resume" else []
    result = cli(*argv, *extra)
    assert result.code == 0, result
    assert (out / "last.pt").is_file()
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 1, log  # the failed attempt's epoch is not mixed into the new log
