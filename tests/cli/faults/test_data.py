"""``data download / info / foreground``: archives, layouts, damaged data sets.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .common import (
    CLASS,
    EPS,
    Result,
    assert_refused,
    bomb_png,
    damaged_data,
    digest,
    temp_leftovers,
    train_argv,
    truncate_file,
    watch_eps_decoder,
)


@pytest.mark.parametrize("quick", [False, True], ids=["D-bomb-info", "D-bomb-info-quick"])
def test_decompression_bomb_in_data_info(cli, tmp_path, quick):
    # before the fixes: DecompressionBombError traceback (also with --quick).
    root = damaged_data(tmp_path, lambda c: bomb_png(c / "train/good/000.png"))
    result = cli("data", "info", "--dataset-dir", root, *(["--quick"] if quick else []))
    assert result.code == 1, result  # data info: 1 = problems found
    assert "Traceback" not in result.text and "000.png" in result.text, result


def test_decompression_bomb_in_data_foreground(cli, tmp_path):
    # D-bomb-foreground. Before the fixes: DecompressionBombError traceback.
    def damage(cls: Path) -> None:
        shutil.rmtree(cls / "train/foreground_mask")
        bomb_png(cls / "train/good/000.png")

    root = damaged_data(tmp_path, damage)
    result = cli("data", "foreground", "--dataset-dir", root, "--method", "threshold",
                 "--device", "cpu")
    assert result.code in (1, 2), result
    assert "Traceback" not in result.text and "000.png" in result.text, result


# ============================================================================ data


def _tar(path: Path, members: list[tuple[str, bytes | str, str]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _headct_archive(path: Path) -> Path:
    png = _png_bytes()
    return _tar(path, [("headct/train/good/000.png", png, "file"),
                       ("headct/test/good/000.png", png, "file"),
                       ("headct/test/hem/000.png", png, "file")])


def _fg_archive(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("headct/foreground_mask/000.png", _png_bytes())
    return path


def download(cli, root: Path, archive: Path, dataset: str = "headct", *extra) -> Result:
    return cli("data", "download", "--dataset", dataset, "--root", root, "--archive", archive,
               *extra)


def test_data_download_unknown_dataset(cli, tmp_path):
    # DD-unknown. Before the fixes: KeyError traceback.
    result = download(cli, tmp_path / "ds", _headct_archive(tmp_path / "a.tar.gz"), "nosuch")
    assert_refused(result, "nosuch")


@pytest.mark.parametrize("kind", ["traversal", "symlink", "zip-traversal"])
def test_data_download_unsafe_archive_is_refused(cli, tmp_path, kind):
    # DD-tar-traversal / DD-tar-symlink / DD-zip-traversal (security); passed before the fixes
    root = tmp_path / "deep" / "ds"
    if kind == "traversal":
        archive = _tar(tmp_path / "a.tar.gz", [("../../evil.txt", b"x", "file")])
    elif kind == "symlink":
        archive = _tar(tmp_path / "a.tar.gz", [("headct/link", str(tmp_path), "symlink"),
                                               ("headct/link/evil.txt", b"x", "file")])
    else:
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../../evil.txt", "x")
    assert_refused(download(cli, root, archive))
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize("kind", ["traversal", "zero", "text"])
def test_data_download_refused_archive_leaves_no_unpacking_folder(cli, tmp_path, kind):
    # DD-leftover-*. Before the fixes: an empty .unpack-* folder stays in the root.
    root = tmp_path / "ds"
    archive = tmp_path / "a.tar.gz"
    if kind == "traversal":
        _tar(archive, [("../../evil.txt", b"x", "file")])
    elif kind == "zero":
        archive.write_bytes(b"")
    else:
        archive.write_text("hello")
    assert_refused(download(cli, root, archive), "a.tar.gz")
    assert temp_leftovers(root) == []


def test_data_download_truncated_archive(cli, tmp_path):
    # DD-tar-truncated. Before the fixes: EOFError traceback and a leftover .unpack-* folder.
    archive = _headct_archive(tmp_path / "a.tar.gz")
    truncate_file(archive)
    root = tmp_path / "ds"
    result = download(cli, root, archive)
    assert result.code in (1, 2), result
    assert "Traceback" not in result.text and "a.tar.gz" in result.text, result
    assert temp_leftovers(root) == []


def test_data_download_keeps_the_users_files(cli, tmp_path):
    # DD-merge-overwrite. Before the fixes: a file of the same name is silently replaced.
    root = tmp_path / "ds"
    mine = root / "headct/train/good/000.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own scan")
    result = download(cli, root, _headct_archive(tmp_path / "a.tar.gz"),
                      "headct", "--foreground-archive", _fg_archive(tmp_path / "fg.zip"))
    assert "Traceback" not in result.text
    assert mine.read_bytes() == b"my own scan", result


def test_data_download_valid_archive_then_again(cli, tmp_path):
    # DD-valid / DD-valid-again; passed before the fixes
    root = tmp_path / "ds"
    archive, fg = _headct_archive(tmp_path / "a.tar.gz"), _fg_archive(tmp_path / "fg.zip")
    assert download(cli, root, archive, "headct", "--foreground-archive", fg).code == 0
    assert (root / "headct/train/good/000.png").is_file()
    assert temp_leftovers(root) == []
    again = download(cli, root, archive, "headct", "--foreground-archive", fg)
    assert again.code == 0 and "already prepared" in again.text, again


def test_data_info_missing_folder_is_bad_input(cli, tmp_path):
    # DI-missing. Before the fixes: "no class folders found" and exit code 1 (= problems found).
    assert_refused(cli("data", "info", "--dataset-dir", tmp_path / "nope"), "does not exist")


def test_data_foreground_keeps_existing_masks(cli, tmp_path):
    # DF-keep; passed before the fixes too
    root = damaged_data(tmp_path, lambda c: None)
    before = digest(root / CLASS / "train/foreground_mask")
    result = cli("data", "foreground", "--dataset-dir", root, "--method", "threshold",
                 "--device", "cpu")
    assert result.code == 0, result
    assert digest(root / CLASS / "train/foreground_mask") == before


def test_data_foreground_device_foo(cli, tmp_path):
    # DF-device-foo. Before the fixes: silently accepted (the threshold method never uses it).
    root = damaged_data(tmp_path, lambda c: shutil.rmtree(c / "train/foreground_mask"))
    result = cli("data", "foreground", "--dataset-dir", root, "--method", "threshold",
                 "--device", "foo")
    assert_refused(result, "foo")
    assert not (root / CLASS / "train/foreground_mask").exists()


@pytest.mark.parametrize("case", ["root-file", "info-file", "foreground-missing"])
def test_data_paths_of_the_wrong_kind(cli, tmp_path, case):
    # DD-root-file / DI-file / DF-missing. Before: errno texts, exit 1, "no class folders".
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if case == "root-file":
        result = download(cli, blocker, _headct_archive(tmp_path / "a.tar.gz"))
        assert_refused(result, "--root", "is a file")
    elif case == "info-file":
        assert_refused(cli("data", "info", "--dataset-dir", blocker), "is a file")
    else:
        result = cli("data", "foreground", "--dataset-dir", tmp_path / "nope", "--method",
                     "full", "--device", "cpu")
        assert_refused(result, "does not exist")


def test_data_download_incomplete_layout_moves_nothing(cli, tmp_path):
    # DD-wrong-layout. Before: refused, but the archive's readme.txt was left in the data set.
    archive = _tar(tmp_path / "a.tar.gz", [("stuff/readme.txt", b"hello", "file")])
    root = tmp_path / "ds"
    result = download(cli, root, archive)
    assert_refused(result, "missing", "nothing was moved")
    assert not list(root.rglob("readme.txt")) and temp_leftovers(root) == []


# ============================================================================ past failures


def _masks(cls: Path) -> None:
    """Three anomalous images with bad masks: empty, soft (faint grey levels), noise."""
    spot = cls / "ground_truth" / "spot"
    rng = np.random.default_rng(0)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(spot / "000_mask.png")
    faint = np.zeros((64, 64), np.uint8)
    faint[20:40, 20:40] = rng.integers(1, 40, (20, 20))
    Image.fromarray(faint).save(spot / "001_mask.png")


def test_data_info_names_empty_faint_and_noise_masks(cli, tmp_path):
    # Formerly (silent): such masks were used as they are and data info said "problems none".
    root = damaged_data(tmp_path, _masks)
    noise = (np.random.default_rng(1).random((64, 64)) > 0.7).astype(np.uint8) * 255
    extra = root / CLASS / "test" / "spot" / "002.png"
    shutil.copy(root / CLASS / "test" / "spot" / "000.png", extra)
    Image.fromarray(noise).save(root / CLASS / "ground_truth" / "spot" / "002_mask.png")
    result = cli("data", "info", "--dataset-dir", root)
    assert result.code == 1, result
    for needle in ("000_mask.png is empty", "001_mask.png is not binary", "faint",
                   "002_mask.png looks like noise"):
        assert needle in result.text, (needle, result)


@pytest.mark.parametrize("where", ["train/good/000.png", "test/spot/000.png"])
def test_data_info_train_and_test_never_decode_an_eps_named_png(cli, tmp_path, monkeypatch,
                                                               finished_run, where):
    # Formerly (security): an EPS file named .png was handed to PIL's EPS plugin (Ghostscript)
    # by train, test and data info.
    calls = watch_eps_decoder(monkeypatch)
    root = damaged_data(tmp_path, lambda c: (c / where).write_bytes(EPS))
    result = cli("data", "info", "--dataset-dir", root)
    assert result.code == 1 and "000.png" in result.text and "EPS" in result.text, result
    if where.startswith("train"):
        used = cli(*train_argv(root, tmp_path / "run"))
    else:
        used = cli("test", "--checkpoint", finished_run / "last.pt", "--dataset-dir", root,
                   "--device", "cpu", "--quiet", "--no-record", "--json", tmp_path / "r.json",
                   "--epsilon-test", "0")
    assert_refused(used, "000.png", "EPS")
    assert calls == []


def test_data_class_name_is_a_single_folder_name(cli, tmp_path, data):
    result = cli("data", "info", "--dataset-dir", data, "--class-name", f"../{data.name}")
    assert_refused(result, "--class-name", "single folder name")


def _class_archive(path: Path, cls: str) -> Path:
    png = _png_bytes()
    return _tar(path, [(f"{cls}/train/good/000.png", png, "file"),
                       (f"{cls}/test/good/000.png", png, "file"),
                       (f"{cls}/test/crack/000.png", png, "file"),
                       (f"{cls}/ground_truth/crack/000_mask.png", png, "file")])


def test_data_download_per_class_archives(cli, tmp_path):
    # Formerly: one archive per class with the class folder at the top (as many mirrors ship
    # MVTec AD) had the class folder stripped as a wrapper, then "bottle/train/good" missing.
    archives = [_class_archive(tmp_path / f"{c}.tar.gz", c) for c in ("bottle", "cable")]
    root = tmp_path / "ds"
    result = cli("data", "download", "--dataset", "mvtec", "--root", root, "--archive",
                 *archives)
    assert result.code == 0, result
    prepared = root / "mvtec"
    for cls in ("bottle", "cable"):
        assert (prepared / cls / "train" / "good" / "000.png").is_file()
        assert (prepared / cls / "ground_truth" / "crack" / "000_mask.png").is_file()
    assert not (prepared / "train").exists()
    assert "13 class(es) are not in them" in result.text, result
    # The next class's archive is added the same way.
    more = cli("data", "download", "--dataset", "mvtec", "--root", root, "--archive",
               _class_archive(tmp_path / "grid.tar.gz", "grid"))
    assert more.code == 0, more
    assert (prepared / "grid" / "test" / "crack" / "000.png").is_file()
