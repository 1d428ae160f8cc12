"""Helpers of the fault tests: running ``patchguard.cli.main`` and checking
what it printed, wrote and refused; tiny data, runs and foreign checkpoints.

Case ids are those of the reliability audit's catalogue; comments ``before: ...`` record what the
code did before the fixes. Every case asserts the desired behaviour: bad input exits 2, failed
work 1 (Ctrl-C 130), one message naming the flag or file and the value, never a traceback;
nothing of the user's is replaced or deleted.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
import yaml

from patchguard.cli import main

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE, TINY_SIZE, tiny_config

CLASS = "bottle"  # a real MVTec class name: no "unknown class" warning in the messages


MODEL_FLAGS = [
    "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", str(TINY_SIZE),
    "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01", "0.05",
    "--batch-size", "4", "--steps-train", "1", "--workers", "0", "--device", "cpu", "--quiet",
]


TRAIN_EPOCHS = 3  # of the shared finished run


# ---------------------------------------------------------------------------- helpers


def digest(path: Path) -> str | dict | None:
    """sha256 of a file, of every file under a folder (a dict), or None when it is missing."""
    path = Path(path)
    if path.is_dir():
        return {str(p.relative_to(path)): digest(p) for p in sorted(path.rglob("*"))
                if p.is_file()}
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_leftovers(folder: Path) -> list[str]:
    """Temporary files and unpacking folders left under a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name.startswith((".unpack-", ".extract-")))


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A 100-byte PNG whose header claims side x side pixels (PIL's DecompressionBombError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return Path(path)


def original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as the original PatchGuard saves it (test_vit, 64 px, 2 blocks)."""
    torch.manual_seed(seed)
    width, hidden = 64, 32
    vit = timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0, img_size=TINY_SIZE)
    state = {f"feature_extractor.pretrained_model.{k}": v.clone()
             for k, v in vit.state_dict().items()}
    state["discriminator.positional_encodings"] = torch.randn(16, width)
    shapes = {
        "layer_norm_1.weight": (width,), "layer_norm_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
        "linear.0.weight": (hidden, width), "linear.0.bias": (hidden,),
        "linear.3.weight": (width, hidden), "linear.3.bias": (width,),
    }
    for i in range(2):
        for name, shape in shapes.items():
            state[f"discriminator.transformer_encoder.{i}.{name}"] = torch.randn(shape) * 0.1
    state["discriminator.output_layer.0.weight"] = torch.randn(1, width) * 0.1
    state["discriminator.output_layer.0.bias"] = torch.zeros(1)
    return state


class Result:
    """Exit code and everything the command printed or logged."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text

    def __repr__(self) -> str:
        return f"Result(code={self.code!r}, text={self.text[-2000:]!r})"


def assert_refused(result: Result, *needles: str, code: int = 2) -> None:
    """Exit code ``code``, no traceback, and every needle (case-insensitive) in the output."""
    assert result.code == code, result
    assert "Traceback" not in result.text, result
    text = result.text.lower()
    missing = [n for n in needles if n.lower() not in text]
    assert not missing, f"message does not mention {missing}: {result}"


def flag_names(key: str) -> tuple[str, str]:
    return f"--{key.replace('_', '-')}", key


def assert_names_key(result: Result, key: str) -> None:
    """The message names a flag or YAML key in any spelling (--a-b, a_b, a-b or "a b")."""
    text = result.text.lower()
    spellings = {key.replace("-", "_"), key.replace("_", "-"), key.replace("_", " ")}
    assert any(s in text for s in spellings), f"message does not name {key}: {result}"


def assert_nothing_written(folder: Path) -> None:
    """The output folder was not written to (an empty folder is tolerated)."""
    assert not folder.exists() or not any(folder.iterdir()), \
        f"{folder} was written before the inputs were checked: {sorted(folder.iterdir())}"


def main_or_fail(argv: Sequence[object]) -> None:
    assert main([str(a) for a in argv]) == 0


def train_argv(data: Path, out: Path, *extra: object, epochs: int = 1) -> list[object]:
    return ["train", "--dataset-dir", data, "--class-name", CLASS, *MODEL_FLAGS,
            "--epochs", epochs, "--output-dir", out, *extra]


def write_yaml(path: Path, data: Path, out: Path, **values) -> Path:
    """A complete tiny YAML config (from conftest.tiny_config) with some values replaced."""
    config = tiny_config(data, out, class_name=CLASS, epochs=1, steps_train=1).to_dict()
    config.update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def damaged_data(tmp_path: Path, damage: Callable[[Path], object]) -> Path:
    """A fresh tiny data set whose class folder ``damage`` then spoils."""
    root = tmp_path / "data"
    make_mvtec_class(root, name=CLASS, n_train=4, n_good=2, n_bad=2, size=64)
    damage(root / CLASS)
    return root


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


def watch_eps_decoder(monkeypatch) -> list[str]:
    """Record every time PIL's EPS plugin (which hands files to Ghostscript) is reached."""
    from PIL import EpsImagePlugin

    calls: list[str] = []
    real_open = EpsImagePlugin.EpsImageFile._open

    def spy_open(self):
        calls.append("EpsImageFile._open")
        return real_open(self)

    def spy_ghostscript(*args, **kwargs):
        calls.append("Ghostscript")
        raise OSError("Ghostscript is not run in the tests")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy_open)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy_ghostscript)
    return calls
