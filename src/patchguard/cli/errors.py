"""How a failed command ends: one message and an exit code, never a traceback.

Exit codes: 2 for bad input (a value outside its domain, a missing or unusable file, a broken
data set), 1 for work that failed (disk full, out of memory, a loss that diverged, a bug), 130
for Ctrl-C. ``--debug`` or ``PATCHGUARD_DEBUG=1`` adds the traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path

BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DEBUG_HINT = "rerun with --debug (or PATCHGUARD_DEBUG=1) and report the traceback"


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """True with ``--debug`` or a PATCHGUARD_DEBUG environment variable other than 0/empty."""
    env = os.environ.get("PATCHGUARD_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def resume_hint(args: argparse.Namespace | None) -> str:
    """How to continue the interrupted work, when there is a checkpoint to continue from."""
    verb = getattr(args, "verb", None)
    if verb == "benchmark" and getattr(args, "train", False):
        return " Rerun the same benchmark command to resume the sweep."
    if verb != "train":
        return ""
    resume = getattr(args, "resume", None)
    folder = getattr(args, "output_dir", None)
    if resume not in (None, "auto"):
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    last = Path(folder or "runs/patchguard") / "last.pt"
    if last.is_file():
        return (f" {last} holds the last completed epoch: continue with "
                f"'patchguard train --resume {last}'.")
    return ""


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    if type(error).__name__ == "OutOfMemoryError":
        return True
    message = str(error).lower()
    return "out of memory" in message or "can't allocate memory" in message


def classify(error: BaseException, args: argparse.Namespace | None) -> tuple[int, str]:
    """The exit code and the one message for an exception that ended a command."""
    from ..data.records import DatasetError

    hint = resume_hint(args)
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, "interrupted." + hint
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        what = "the file is too large for this file system" if error.errno == errno.EFBIG \
            else "no space left on the device"
        return FAILED, f"{what} ({error}); free space, then run the command again.{hint}"
    if _is_out_of_memory(error):
        where = "the GPU" if "cuda" in str(error).lower() or \
            type(error).__name__ == "OutOfMemoryError" else "the machine"
        return FAILED, (f"{where} ran out of memory; lower --batch-size (or --image-size"
                        f"{', or add --bf16' if where == 'the GPU' else ''}).{hint}")
    if isinstance(error, FloatingPointError):
        return FAILED, f"{error}.{hint}"
    if isinstance(error, (DatasetError, ValueError, ImportError, OSError)):
        # ValueError includes every InputError; OSError: missing files, unwritable folders.
        return BAD_INPUT, str(error)
    if type(error).__name__ in ("BackboneWeightsError", "DownloadError", "ManualDownloadError",
                                "ChecksumError", "LayoutError"):
        return BAD_INPUT, str(error)
    return FAILED, (f"{type(error).__name__}: {error}\nthis looks like a bug in patchguard; "
                    f"{_DEBUG_HINT}.{hint}")


def report(error: BaseException, args: argparse.Namespace | None, debug: bool) -> int:
    """Print the message (and in debug mode the traceback) on stderr; return the exit code."""
    code, message = classify(error, args)
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return code
