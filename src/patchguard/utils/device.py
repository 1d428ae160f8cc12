"""Choosing the torch device: ``auto`` takes CUDA when present."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .checks import DEVICE_HINT, InputError
from .checks import device as device_name


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; other names must exist on this machine.

    Raises InputError (naming --device) for a name torch does not know or a device this machine
    does not have, before any work starts.
    """
    if isinstance(name, torch.device):
        return name
    label = "--device"
    name = device_name(label, name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(label, name, "is not a device name", DEVICE_HINT) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(label, name, "asked for, but PyTorch sees no CUDA device",
                             "use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(label, name, f"does not exist: this machine has {count} GPU(s), "
                             f"cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(label, name, "asked for, but this PyTorch has no MPS device",
                             "use --device cpu (or auto)")
    elif device.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise InputError(label, name, "asked for, but PyTorch sees no XPU device",
                             "use --device cpu (or auto)")
    return device


@contextmanager
def cuda_speed_settings(device: torch.device, tf32: bool = True) -> Iterator[None]:
    """On CUDA, TF32 matmuls and convolutions for fp32 (bf16 autocast is unaffected), restored
    afterwards; nothing on other devices.

    TF32 rounds matmul inputs to 10 mantissa bits: about 1e-3 relative per product, far below
    the run-to-run spread of training, but not bit-identical to fp32 (--no-tf32 turns it off).
    Evaluation outside training keeps full fp32.
    """
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
